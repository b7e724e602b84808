// The screen as text, on the session page and the watch page: what the
// machine's state is, in words (running, text or graphics mode, its size);
// a "Screen as text" panel that a screen reader reads (the guest's text screen
// in a <pre>, its new lines announced politely, not the whole screen each
// time); and "Copy screen text" (all of it, or the lines selected in the
// panel). The owner's page listens on its events socket (session.js sends
// what this module asks, and says when the socket opens again) only while the
// panel is open; a watcher's page asks screen.txt once a second while it is
// open (the portal reads each machine at most once per interval however many
// ask). When the display changes size (a mode change), screen.txt is asked
// once, so the state line says which mode the machine is in: nothing is read
// while nobody looks.
const _ = window.gettext || ((text) => text);
const format = (text, values) => text.replace(/%\((\w+)\)s/g, (all, name) => String(values[name]));

const root = document.getElementById("screen-text");
if (root) screenTextStart(root);

function screenTextStart(section) {
  const textPath = section.dataset.textPath;
  const bySocket = section.dataset.listen === "socket";
  const toggle = document.getElementById("screen-text-toggle");
  const panel = document.getElementById("screen-text-panel");
  const pre = document.getElementById("screen-text-pre");
  const graphicsNote = document.getElementById("screen-text-graphics");
  const announcer = document.getElementById("screen-text-announce");
  const copyButton = document.getElementById("screen-text-copy");
  const copyStatus = document.getElementById("screen-text-status");
  const machineState = document.getElementById("machine-state");
  const stateLabel = document.getElementById("state");
  const screen = document.getElementById("screen");

  let lines = [];
  let cursor = null;
  let mode = null; // {text: true, columns, rows} | {text: false, width, height}
  let pollTimer = null;
  let state = stateLabel ? stateLabel.dataset.state : "";

  const isOpen = () => !panel.hidden;

  function describeState() {
    const words = {
      queued: _("Waiting in line for a machine"),
      starting: _("Starting"),
      running: _("Running"),
      ended: _("Ended"),
    };
    const parts = [words[state] || state];
    if (state === "running" && mode) {
      if (mode.text) parts.push(format(_("text mode %(columns)s×%(rows)s"), mode));
      else if (mode.width) parts.push(format(_("graphics %(width)s×%(height)s"), mode));
      else parts.push(_("graphics"));
    }
    machineState.textContent = parts.join(" · ");
  }

  // Each row is a <span> of its own, so that rewriting the rows that changed
  // keeps a selection in the others.
  function render(newLines) {
    while (pre.childNodes.length > newLines.length) pre.lastChild.remove();
    newLines.forEach((line, row) => {
      let span = pre.childNodes[row];
      if (!span) {
        span = document.createElement("span");
        pre.appendChild(span);
      }
      const text = `${line}\n`;
      if (span.textContent !== text) span.textContent = text;
    });
  }

  // The lines a screen reader is told: the rows that scrolled in or changed,
  // except the one the cursor is on (being typed; the reader echoes typing).
  function newLinesOf(before, after, cursorRow) {
    const rows = after.length;
    let shift = 0;
    if (before.length === rows) {
      for (shift = 0; shift < rows; shift += 1) {
        let same = true;
        for (let row = 0; row + shift < rows - 1 && same; row += 1) same = before[row + shift] === after[row];
        if (same) break;
      }
    }
    const found = [];
    after.forEach((line, row) => {
      const old = row + shift < before.length ? before[row + shift] : undefined;
      if (line.trim() && line !== old && row !== cursorRow) found.push(line);
    });
    return found;
  }

  function announce(found) {
    if (!found.length) return;
    const shown = found.slice(0, 10);
    if (found.length > shown.length) {
      shown.push(format(_("…and %(count)s more lines (all of them are in the panel)."),
                        { count: found.length - shown.length }));
    }
    const entry = document.createElement("p");
    entry.textContent = shown.join("\n");
    announcer.appendChild(entry);
    while (announcer.childNodes.length > 20) announcer.firstChild.remove();
  }

  function showText(newLines, newCursor, geometry) {
    mode = { text: true, ...geometry };
    graphicsNote.hidden = true;
    pre.hidden = false;
    copyButton.disabled = false;
    const before = lines;
    lines = newLines;
    cursor = newCursor;
    render(lines);
    pre.dataset.cursor = cursor ? cursor.join(",") : "";
    if (before.length) announce(newLinesOf(before, lines, cursor ? cursor[1] : -1));
    describeState();
  }

  function showGraphics(width, height) {
    const wasText = !mode || mode.text;
    mode = { text: false, width, height };
    lines = [];
    render([]);
    pre.hidden = true;
    copyButton.disabled = true;
    graphicsNote.hidden = false;
    graphicsNote.textContent = width
      ? format(_("The screen shows graphics (%(width)s×%(height)s pixels), not text: there is no text to read now."), mode)
      : _("The screen shows graphics, not text: there is no text to read now.");
    if (wasText && isOpen()) announce([graphicsNote.textContent]);
    describeState();
  }

  // One read of screen.txt: the mode, and the text when there is some.
  async function fetchOnce() {
    let response;
    try {
      response = await fetch(textPath, { credentials: "same-origin", cache: "no-store" });
    } catch {
      return;
    }
    if (response.status === 200) {
      const text = await response.text();
      const [columns, rows] = (response.headers.get("X-Screen-Size") || "80x25").split("x").map(Number);
      const newCursor = (response.headers.get("X-Cursor") || "0,0").split(",").map(Number);
      showText(text.replace(/\n$/, "").split("\n"), newCursor, { columns, rows });
    } else if (response.status === 409) {
      let body = {};
      try { body = await response.json(); } catch { /* not JSON: a proxy's page */ }
      if (body.error === "graphics_mode") showGraphics(body.width || 0, body.height || 0);
    }
  }

  function onMessage(data) {
    if (data.type !== "screen_text" || !isOpen()) return;
    if (data.mode === "graphics") showGraphics(data.width, data.height);
    else showText(data.lines, data.cursor, { columns: data.columns, rows: data.rows });
  }

  function listen(on) {
    if (bySocket) {
      window.dispatchEvent(new CustomEvent("portal:events-send", { detail: { type: "screen_text", listen: on } }));
      return;
    }
    clearInterval(pollTimer);
    pollTimer = null;
    if (on) {
      fetchOnce();
      pollTimer = setInterval(fetchOnce, 1000);
    }
  }

  function open(show) {
    panel.hidden = !show;
    toggle.setAttribute("aria-expanded", String(show));
    listen(show && state === "running");
    if (show) pre.focus();
  }

  toggle.addEventListener("click", () => open(panel.hidden));
  document.getElementById("screen-text-close").addEventListener("click", () => {
    open(false);
    toggle.focus();
  });
  panel.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      open(false);
      toggle.focus();
    }
  });

  copyButton.addEventListener("click", async () => {
    const selection = window.getSelection();
    const selected = selection && !selection.isCollapsed && pre.contains(selection.anchorNode)
      ? selection.toString() : "";
    const text = selected || lines.join("\n");
    const count = text.replace(/\n$/, "").split("\n").length;
    try {
      await navigator.clipboard.writeText(text);
      copyStatus.textContent = selected
        ? format(_("Copied the %(count)s selected lines."), { count })
        : format(_("Copied the screen's %(count)s lines."), { count });
    } catch {
      copyStatus.textContent = _("This browser did not let the page copy: select the text in the panel and copy it yourself.");
    }
  });

  window.addEventListener("portal:event", (event) => onMessage(event.detail));
  // A new events socket (session.js reconnected) knows nothing of this panel yet.
  window.addEventListener("portal:events-open", () => { if (isOpen() && state === "running") listen(true); });

  let modeAsk = () => {};
  if (stateLabel) {
    new MutationObserver(() => {
      const next = stateLabel.dataset.state;
      if (next === state) return;
      state = next;
      if (state !== "running") mode = null;
      if (isOpen()) listen(state === "running");
      // Running with a picture already on the screen (a page changed in place):
      // which mode it is in is asked now, as after a change of size.
      if (state === "running" && !mode) modeAsk();
      describeState();
    }).observe(stateLabel, { attributes: true, attributeFilter: ["data-state"] });
  }
  // The display's size changes with the guest's mode: ask once which mode it is.
  if (screen) {
    let sizeTimer = null;
    const sizeChanged = () => {
      clearTimeout(sizeTimer);
      sizeTimer = setTimeout(() => { if (state === "running" && !isOpen()) fetchOnce(); }, 300);
    };
    const observer = new MutationObserver((records) => {
      for (const record of records) {
        if (record.type === "attributes" && record.target.tagName === "CANVAS") sizeChanged();
        if (record.type === "childList") {
          for (const node of record.addedNodes) if (node.tagName === "CANVAS" || node.querySelector?.("canvas")) sizeChanged();
        }
      }
    });
    observer.observe(screen, { subtree: true, childList: true, attributes: true, attributeFilter: ["width", "height"] });
    modeAsk = () => { if (screen.querySelector("canvas")) sizeChanged(); };
    modeAsk();
  }
  describeState();
}
