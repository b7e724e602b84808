// The recording page's Download as video: the WebM is made on the server the first
// time it is asked for; meanwhile the page says how far it has got, then downloads it.
import { format, gettext } from "./i18n.js";

const link = document.getElementById("recording-download");
const status = document.getElementById("export-status");
const POLL_MS = 1500;

async function exportWait() {
  while (true) {
    const answer = await fetch(link.href, { method: "GET", credentials: "same-origin" });
    if (answer.status === 200) {
      status.textContent = gettext("The video is ready.");
      window.location.assign(link.href);
      return;
    }
    let data = {};
    try { data = await answer.json(); } catch { /* not JSON */ }
    if (answer.status !== 202 || (data.export && data.export.state === "failed")) {
      status.textContent = data.detail || gettext("The video could not be made.");
      return;
    }
    const done = new Intl.NumberFormat(document.documentElement.lang || undefined, { style: "percent" })
      .format((data.export && data.export.progress) || 0);
    status.textContent = format(gettext("Making the video: %(done)s done…"), { done });
    await new Promise((resolve) => { setTimeout(resolve, POLL_MS); });
  }
}

if (link) {
  link.addEventListener("click", (event) => {
    event.preventDefault();
    link.setAttribute("aria-disabled", "true");
    exportWait().finally(() => link.removeAttribute("aria-disabled"));
  });
}
