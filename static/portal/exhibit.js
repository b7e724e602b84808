import { api, csrfToken } from "./csrf.js";
import { displayPictured, displayScreen, displaySocketDrop, displaySocketOpen } from "./early-display.js";
import { pageBecome } from "./page-swap.js";
import { escapeHtml, format, gettext } from "./i18n.js";

const article = document.querySelector("article.exhibit");
const form = document.getElementById("start-form");
const button = document.getElementById("start");
const message = document.getElementById("message");

// On the embed page (inside another site's iframe) the machine's page opens in
// the same frame, chrome-less and frameable like this one.
const embed = article.dataset.embed === "1";
const machinePage = (url) => (embed ? `${url}?embed=1` : url);

function say(html) {
  message.innerHTML = html;
  message.hidden = false;
}

// A browser that keeps cookies from this frame (third-party cookies blocked,
// or the portal not yet set up for cross-site embedding) could not keep the
// visitor's machine: say so, and offer the exhibit in a tab of its own.
if (embed && form && !csrfToken()) {
  button.disabled = true;
  say(`${escapeHtml(gettext("This browser does not let the exhibit run inside this page."))} ` +
    `<a href="/exhibits/${article.dataset.slug}/" target="_blank" rel="noopener">${escapeHtml(gettext("Open it in a new tab"))}</a>.`);
}

// Fetch the display client while the visitor reads (the machine page's own
// modules are preloaded by this page's links), so the machine's page starts
// streaming without first loading anything.
window.addEventListener("load", () => { import("/static/novnc/core/rfb.js").catch(() => {}); });

// How long the page's change waits for the display's first update to be asked for.
const ASK_WAIT_MS = 100;
// How long the machine page's scripts wait for its first picture to be drawn.
const PICTURE_WAIT_MS = 250;

// The machine's page, in place of this one: its display socket opened at once
// (the session's id is known), the page itself in the start's answer (asked for
// with `page=1`). A page that cannot be had so is navigated to instead.
async function machineShow(data) {
  const url = machinePage(data.page_url);
  const asked = data.state === "queued" || data.state === "ended" ? null : displaySocketOpen(data.vnc_path);
  try {
    const html = data.page_html;
    if (!html) throw new Error("the start's answer has no page");
    // The page's change keeps this thread busy for a while: the display's opening
    // goes first, so the server makes the first picture meanwhile; not for long,
    // should the socket be slow.
    if (asked) await Promise.race([asked, new Promise((resolve) => { setTimeout(resolve, ASK_WAIT_MS); })]);
    const keep = asked ? displayScreen(data.vnc_path) : null;
    // The picture first, then the page's scripts; not for long, should it be slow.
    const first = keep ? Promise.race([displayPictured(data.vnc_path),
      new Promise((resolve) => { setTimeout(resolve, PICTURE_WAIT_MS); })]) : null;
    await pageBecome(html, url, { keep, first });
  } catch {
    displaySocketDrop(data.vnc_path);
    window.location.assign(url);
  }
}

// No button: the exhibit cannot be started now, and the page says why. The button
// is a plain form too, so a press before this script ran still starts the machine.
form?.addEventListener("submit", async (event) => {
  event.preventDefault();
  button.disabled = true;
  button.textContent = gettext("Starting…");
  // The form's own address: a cited version's page starts that version.
  const { status, data } = await api("POST",
    `${form.getAttribute("action")}?page=1${embed ? "&embed=1" : ""}`);
  if (status === 201) {
    await machineShow(data);
    return;
  }
  button.disabled = false;
  button.textContent = gettext("Start");
  if (status === 409 && data && data.error === "exhibit_unavailable") {
    say(escapeHtml(data.detail));
    button.disabled = true;
  } else if (status === 409) {
    say(format(escapeHtml(gettext("You already have a machine running. %(link)s, or end it there to start this one.")),
      { link: `<a href="${machinePage(data.page_url)}">${escapeHtml(gettext("Go back to it"))}</a>` }));
  } else if (status === 503 || status === 429) {
    say(escapeHtml((data && data.detail) || gettext("The server is busy. Please try again in a moment.")));
  } else {
    say(escapeHtml((data && data.detail) || gettext("The machine could not be started. Please try again.")));
  }
});

// The iframe snippet for other sites: one press copies it.
const copyButton = document.getElementById("copy-embed");
copyButton?.addEventListener("click", async () => {
  const snippet = document.getElementById("embed-snippet");
  const status = document.getElementById("copy-embed-status");
  try {
    await navigator.clipboard.writeText(snippet.value);
    status.textContent = gettext("Copied.");
  } catch {
    snippet.select();
    status.textContent = gettext("Selected: copy it with your keyboard or menu.");
  }
});
