// The visitor's tools on the machine page: Paste (the clipboard, or a text box
// where the browser does not let the page read it, typed by the server as
// keystrokes), key combinations, Screenshot (a download from the server), and
// Watch together (a link to copy, how many watch, Revoke, handing one watcher the
// keyboard and mouse and taking them back). session.js starts it and passes on
// the session's events ("portal:event").
import { api } from "./csrf.js";
import { format, gettext, ngettext } from "./i18n.js";

// How long the browser may take to hand over the clipboard before the text box
// is offered instead (a permission prompt nobody answers).
const CLIPBOARD_WAIT_MS = 3000;

export function toolsStart(session, currentRfb) {
  // A page without the tools' block (a chrome-less one) has none of them.
  if (!document.getElementById("tools")) return;
  const pasteButton = document.getElementById("paste");
  const pastePanel = document.getElementById("paste-panel");
  const pasteForm = document.getElementById("paste-form");
  const pasteText = document.getElementById("paste-text");
  const pasteStatus = document.getElementById("paste-status");
  const combo = document.getElementById("combo");
  const screenshot = document.getElementById("screenshot");
  const watchToggle = document.getElementById("watch-toggle");
  const watchPanel = document.getElementById("watch-panel");
  const watchUrl = document.getElementById("watch-url");
  const watchCopy = document.getElementById("watch-copy");
  const watchRevoke = document.getElementById("watch-revoke");
  const watchStatus = document.getElementById("watch-status");
  const watchersLine = document.getElementById("watchers-line");
  const watcherCount = document.getElementById("watcher-count");
  const keysPath = `/api/sessions/${session.id}/keys`;
  const watchersPath = `/api/sessions/${session.id}/watchers`;

  const focusMachine = () => { const rfb = currentRfb(); if (rfb) rfb.focus(); };

  async function type(text) {
    pasteStatus.textContent = format(ngettext("Typing %(count)s character…", "Typing %(count)s characters…",
      text.length), { count: text.length });
    const { status, data } = await api("POST", keysPath, { text });
    if (status === 204) {
      pasteStatus.textContent = format(ngettext("Typed %(count)s character.", "Typed %(count)s characters.",
        text.length), { count: text.length });
      return true;
    }
    pasteStatus.textContent = (data && data.detail) || gettext("The text could not be typed.");
    return false;
  }

  async function clipboardText() {
    if (!navigator.clipboard || !navigator.clipboard.readText) return null;
    try {
      const timeout = new Promise((resolve) => setTimeout(() => resolve(null), CLIPBOARD_WAIT_MS));
      return await Promise.race([navigator.clipboard.readText(), timeout]);
    } catch {
      return null;
    }
  }

  function showPasteBox(why) {
    pastePanel.hidden = false;
    watchPanel.hidden = true;
    pasteStatus.textContent = why;
    pasteText.focus();
  }

  pasteButton.addEventListener("click", async () => {
    pasteButton.disabled = true;
    try {
      const text = await clipboardText();
      if (text) {
        pastePanel.hidden = false;
        watchPanel.hidden = true;
        if (await type(text)) {
          pastePanel.hidden = true;
          focusMachine();
        }
      } else {
        showPasteBox(text === "" ? gettext("The clipboard is empty: type or paste the text here.")
          : gettext("This browser does not let the page read the clipboard: paste or type the text here."));
      }
    } finally {
      pasteButton.disabled = false;
    }
  });

  pasteForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = pasteText.value;
    if (!text) return;
    const send = pasteForm.querySelector("button.send");
    send.disabled = true;
    if (await type(text)) pasteText.value = "";
    send.disabled = false;
  });
  document.getElementById("paste-cancel").addEventListener("click", () => {
    pastePanel.hidden = true;
    focusMachine();
  });

  combo.addEventListener("change", async () => {
    const name = combo.value;
    combo.value = "";
    if (!name) return;
    const { status, data } = await api("POST", keysPath, { combo: name });
    if (status !== 204) {
      showPasteBox((data && data.detail) || gettext("The keys could not be sent."));
    }
    focusMachine();
  });

  // --- Screenshot: the server's own picture, named after the exhibit and the time.
  screenshot.addEventListener("click", () => setTimeout(focusMachine, 0));

  // --- Watch together -------------------------------------------------------------

  const watcherList = document.getElementById("watcher-list");
  const controlPath = `${watchersPath}/control`;

  function showWatchers(count, names, control) {
    watcherCount.hidden = !count;
    watcherCount.textContent = String(count);
    watchersLine.textContent = count === 0 ? gettext("Nobody is watching.")
      : format(ngettext("%(count)s person is watching.", "%(count)s people are watching.", count), { count });
    if (names === undefined) return;
    watcherList.innerHTML = "";
    names.forEach((name, index) => {
      const item = document.createElement("li");
      const label = document.createElement("span");
      label.textContent = format(name === control ? gettext("Watcher %(number)s has your keyboard and mouse")
        : gettext("Watcher %(number)s"), { number: index + 1 });
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = name === control ? gettext("Take back") : gettext("Give keyboard and mouse");
      button.addEventListener("click", async () => {
        const { status, data } = name === control
          ? await api("DELETE", controlPath) : await api("POST", controlPath, { watcher: name });
        if (status !== 204) watchStatus.textContent = (data && data.detail) || gettext("That did not work.");
      });
      item.append(label, " ", button);
      watcherList.appendChild(item);
    });
  }

  async function watchOpen() {
    pastePanel.hidden = true;
    watchPanel.hidden = false;
    watchToggle.setAttribute("aria-expanded", "true");
    if (!watchUrl.value) {
      watchStatus.textContent = gettext("Making a link…");
      const { status, data } = await api("POST", watchersPath);
      if (status !== 201) {
        watchStatus.textContent = (data && data.detail) || gettext("No link could be made.");
        return;
      }
      watchUrl.value = new URL(data.watch_url, window.location.href).href;
      watchStatus.textContent = "";
    }
    const { status, data } = await api("GET", watchersPath);
    if (status === 200) showWatchers(data.watchers, data.names, data.control);
    watchUrl.select();
  }

  watchToggle.addEventListener("click", () => {
    if (watchPanel.hidden) {
      watchOpen();
    } else {
      watchPanel.hidden = true;
      watchToggle.setAttribute("aria-expanded", "false");
      focusMachine();
    }
  });
  watchCopy.addEventListener("click", async () => {
    watchUrl.select();
    try {
      await navigator.clipboard.writeText(watchUrl.value);
      watchStatus.textContent = gettext("Copied.");
    } catch {
      watchStatus.textContent = gettext("Select the link and copy it.");
    }
  });
  watchRevoke.addEventListener("click", async () => {
    const { status, data } = await api("DELETE", watchersPath);
    if (status === 204) {
      watchUrl.value = "";
      showWatchers(0, [], null);
      watchStatus.textContent = gettext("The link no longer works, and everyone watching was disconnected. " +
        "Close and open this panel for a new link.");
    } else {
      watchStatus.textContent = (data && data.detail) || gettext("The link could not be revoked.");
    }
  });

  function ended() {
    for (const control of [pasteButton, combo, watchToggle]) control.disabled = true;
    screenshot.hidden = true;
    pastePanel.hidden = true;
    watchPanel.hidden = true;
  }

  window.addEventListener("portal:event", (event) => {
    const data = event.detail;
    if (data.type === "watchers") showWatchers(data.count, data.watchers, data.control);
    else if (data.type === "ended" || (data.type === "state" && data.state === "ended")) ended();
  });
  if (session.state === "ended") ended();
}
