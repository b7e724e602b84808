// How the visitor's keys reach the machine: the toolbar switch "Keys by position"
// (the session's key_mode: "characters", the default, types what the visitor's
// key prints on the machine's own keyboard layout; "positions" sends the physical
// keys, for games that use the key positions), remembered in this browser and set
// on each new visit; and the notice when keys typed characters the machine's
// layout cannot type (the events socket's "untypable", passed on by session.js as
// "portal:event").
import { api } from "./csrf.js";
import { format, gettext } from "./i18n.js";

const STORE = "portal.keyMode";
const NOTICE_MS = 6000;

function stored() {
  try { return window.localStorage.getItem(STORE); } catch { return null; }
}

function store(mode) {
  try { window.localStorage.setItem(STORE, mode); } catch { /* private browsing: not kept */ }
}

function keyboardStart() {
  const data = document.getElementById("session-data");
  const toggle = document.getElementById("key-mode");
  const notice = document.getElementById("keys-notice");
  if (!data) return;
  const session = JSON.parse(data.textContent);
  const path = `/api/sessions/${session.id}/key_mode`;
  let mode = session.key_mode || "characters";
  let noticeTimer = null;

  function show(current) {
    mode = current;
    if (!toggle) return;  // a chrome-less (embedded) page: the remembered choice still applies
    toggle.setAttribute("aria-pressed", String(mode === "positions"));
    toggle.dataset.mode = mode;
  }

  function say(text) {
    if (!notice) return;
    notice.textContent = text;
    notice.hidden = false;
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => { notice.hidden = true; }, NOTICE_MS);
  }

  async function choose(wanted) {
    const { status, data: answer } = await api("PUT", path, { key_mode: wanted });
    if (status === 200 && answer) {
      show(answer.key_mode);
      return true;
    }
    say((answer && answer.detail) || gettext("The keys could not be switched."));
    return false;
  }

  // One change at a time, in order: a press (also one the page held while its
  // scripts started) waits for the remembered choice being set.
  let pending = Promise.resolve();
  const after = (step) => { pending = pending.then(step, step); return pending; };
  show(mode);
  if (toggle) {
    toggle.addEventListener("click", () => after(async () => {
      const wanted = mode === "positions" ? "characters" : "positions";
      if (await choose(wanted)) store(wanted);
    }));
  }
  const remembered = stored();
  if ((remembered === "positions" || remembered === "characters") && remembered !== mode) {
    after(() => choose(remembered));
  }
  window.addEventListener("portal:event", (event) => {
    const message = event.detail;
    if (!message || message.type !== "untypable") return;
    const characters = (message.characters || []).join(" ");
    say(format(gettext("The machine's keyboard cannot type this, so nothing was sent: %(characters)s"),
      { characters }));
  });
}

keyboardStart();
