// Save to my computer: the session page's form posts for the visit's file (a plain
// form works without this script: the browser downloads the answer). With it, the
// page stays as it is, says what happens, and tells a refusal in words.
import { csrfToken } from "./csrf.js";
import { gettext } from "./i18n.js";

const form = document.getElementById("save-form");
const status = document.getElementById("save-status");
const button = document.getElementById("save-visit");

function filenameOf(response) {
  const match = /filename="([^"]+)"/.exec(response.headers.get("Content-Disposition") || "");
  return match ? match[1] : "visit.visit";
}

form?.addEventListener("submit", async (event) => {
  event.preventDefault();
  button.disabled = true;
  status.textContent = gettext("Saving the machine…");
  try {
    const response = await fetch(form.action, {
      method: "POST", credentials: "same-origin", headers: { "X-CSRFToken": csrfToken() },
    });
    if (!response.ok) {
      let detail = gettext("The machine could not be saved; please try again.");
      try { detail = (await response.json()).detail || detail; } catch { /* not JSON */ }
      status.textContent = detail;
      return;
    }
    const url = URL.createObjectURL(await response.blob());
    const link = document.createElement("a");
    link.href = url;
    link.download = filenameOf(response);
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
    status.textContent = gettext("Saved. Open the exhibit's page and choose Resume from a file to go on from it.");
  } catch {
    status.textContent = gettext("The machine could not be saved; please try again.");
  } finally {
    button.disabled = false;
  }
});
