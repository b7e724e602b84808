// What the machine printed: every machine has a printer on LPT1, and each job
// it prints arrives as a PDF. The events socket (session.js passes its events
// on as "portal:event") says "printed" with the print, or "print_failed" with a
// sentence; the page shows "Printed: 2 pages" with the PDF to open or download,
// announced politely, and lists the visit's prints. On load the list is asked
// once (GET /api/sessions/<id>/prints), so a reloaded page still offers them.
import { format, gettext as _, ngettext as plural } from "./i18n.js";

const section = document.getElementById("prints");
if (section) printsStart(section);

function printsStart(root) {
  const latest = document.getElementById("prints-latest");
  const all = document.getElementById("prints-all");
  const list = document.getElementById("prints-list");
  const seen = new Set();

  function pagesText(count) {
    return format(plural("Printed: %(count)s page", "Printed: %(count)s pages", count), { count });
  }

  function links(print) {
    const open = document.createElement("a");
    open.href = print.url;
    open.target = "_blank";
    open.rel = "noopener";
    open.textContent = _("Open the PDF");
    const save = document.createElement("a");
    save.href = print.url;
    save.download = "";
    save.textContent = _("Download");
    const parts = [open, document.createTextNode(" · "), save];
    if (print.raw_url) {
      const raw = document.createElement("a");
      raw.href = print.raw_url;
      raw.download = "";
      raw.textContent = _("The printer's own file (PCL)");
      parts.push(document.createTextNode(" · "), raw);
    }
    return parts;
  }

  function add(print, announce) {
    if (seen.has(print.id)) return;
    seen.add(print.id);
    root.hidden = false;
    const item = document.createElement("li");
    const when = new Date(print.created_at);
    item.append(`${pagesText(print.pages)} (${when.toLocaleTimeString()}) `, ...links(print));
    list.append(item);
    all.hidden = seen.size < 2;
    if (!announce) return;
    latest.replaceChildren(pagesText(print.pages) + " ", ...links(print));
    if (print.truncated) {
      latest.append(" " + _("The job was longer than a print may be, so its end was cut off."));
    }
  }

  window.addEventListener("portal:event", (event) => {
    const data = event.detail || {};
    if (data.type === "printed" && data.print) add(data.print, true);
    if (data.type === "print_failed") {
      root.hidden = false;
      latest.textContent = format(_("A print job could not be made: %(detail)s"), { detail: data.detail });
    }
  });

  fetch(root.dataset.printsPath, { credentials: "same-origin" })
    .then((response) => (response.ok ? response.json() : { prints: [] }))
    .then((body) => {
      const prints = body.prints || [];
      prints.forEach((print, index) => add(print, index === prints.length - 1));
    })
    .catch(() => {});
}
