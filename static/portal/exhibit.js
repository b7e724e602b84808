import { api } from "./csrf.js";

const article = document.querySelector("article.exhibit");
const form = document.getElementById("start-form");
const button = document.getElementById("start");
const message = document.getElementById("message");

function say(html) {
  message.innerHTML = html;
  message.hidden = false;
}

// Fetch the display client while the visitor reads, so the machine's page
// starts streaming without first loading it.
window.addEventListener("load", () => { import("/static/novnc/core/rfb.js").catch(() => {}); });

// No button: the exhibit cannot be started now, and the page says why. The button
// is a plain form too, so a press before this script ran still starts the machine.
form?.addEventListener("submit", async (event) => {
  event.preventDefault();
  button.disabled = true;
  button.textContent = "Starting…";
  const { status, data } = await api("POST", `/api/exhibits/${article.dataset.slug}/sessions`);
  if (status === 201) {
    window.location.assign(data.page_url);
    return;
  }
  button.disabled = false;
  button.textContent = "Start";
  if (status === 409 && data && data.error === "exhibit_unavailable") {
    say(data.detail);
    button.disabled = true;
  } else if (status === 409) {
    say(`You already have a machine running. <a href="${data.page_url}">Go back to it</a>, or end it there to start this one.`);
  } else if (status === 503 || status === 429) {
    say((data && data.detail) || "The server is busy. Please try again in a moment.");
  } else {
    say((data && data.detail) || "The machine could not be started. Please try again.");
  }
});
