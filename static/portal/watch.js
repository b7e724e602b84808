// The watch page (/watch/<token>/): the machine live and read-only for anyone
// with the link. noVNC sends no input here (viewOnly), and the server lets
// nothing but requests for pictures through anyway. The page asks for the
// visit's state and how many watch now and then, and says when it ends or the
// owner revokes the link; when the owner hands this watcher the keyboard and
// mouse, it lets noVNC send them until the owner takes them back.
import RFB from "/static/novnc/core/rfb.js";
import { format, gettext, ngettext } from "./i18n.js";
import { ScreenFocus } from "./screen-focus.js";

const watch = JSON.parse(document.getElementById("watch-data").textContent);
const screen = document.getElementById("screen");
const stateLabel = document.getElementById("state");
const drivesLabel = document.getElementById("watch-drives");
const notice = document.getElementById("notice");
const watchersLabel = document.getElementById("watchers");
const controlLabel = document.getElementById("control");
const enter = document.getElementById("screen-enter");
const controlSaid = document.getElementById("control-said");

const STATE_EVERY_MS = 2000;
// The visit's states as the bar shows them to a watcher.
const STATES = {
  queued: gettext("waiting"),
  starting: gettext("starting"),
  running: gettext("live"),
  ending: gettext("ending"),
  ended: gettext("ended"),
};
const CLOSE = { REVOKED: 4401, UNKNOWN: 4404, QUEUED: 4409, ENDED: 4410, REPLACED: 4412, TOO_MANY: 4429 };

let rfb = null;
let finished = false;
let retryMs = 500;
let stateTimer = null;
// This socket's name, so the page can ask whether the owner handed it the
// keyboard and mouse (a new one for every connection).
let watcherId = "";
let inControl = false;
// The screen's name, and the way out for the keyboard (a watcher given control types into it).
const screenFocus = new ScreenFocus({ screen, enter, display: () => rfb });

function newWatcherId() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
}

function showControl(control) {
  if (control === inControl) return;
  inControl = control;
  if (rfb) {
    rfb.viewOnly = !control;
    // The owner's doing, not this watcher's: the keyboard moves only if the page's focus was nowhere.
    if (control && screenFocus.idle()) rfb.focus();
  }
  controlLabel.hidden = !control;
  controlSaid.textContent = control
    ? gettext("You have the keyboard and mouse: press Type into the machine, or click the screen.")
    : gettext("The owner has the keyboard and mouse.");
  enter.disabled = !control;
}

function say(text) {
  notice.textContent = text;
  notice.hidden = !text;
}

function showState(data) {
  stateLabel.dataset.state = data.state;
  stateLabel.textContent = STATES[data.state] || data.state;
  const count = data.watchers;
  watchersLabel.dataset.count = String(count);
  watchersLabel.textContent = format(ngettext("%(count)s watching", "%(count)s watching", count), { count });
  // The disk box's drives, where the exhibit has one: what the owner put in each.
  const drives = Array.isArray(data.drives) ? data.drives : [];
  drivesLabel.hidden = drives.length === 0;
  const shown = drives.map((entry) => {
    const name = entry.drive === "cd" ? gettext("CD drive")
      : format(gettext("Drive %(letter)s:"), { letter: entry.drive.toUpperCase() });
    return `${name} ${entry.disk === null ? gettext("empty") : entry.label}`;
  }).join(" · ");
  if (drivesLabel.textContent !== shown) drivesLabel.textContent = shown;
}

function finish(text) {
  finished = true;
  say(text);
  if (stateTimer) clearInterval(stateTimer);
  if (rfb) {
    const old = rfb;
    rfb = null;
    old.disconnect();
  }
}

function showEnded() {
  stateLabel.dataset.state = "ended";
  stateLabel.textContent = STATES.ended;
  finish(gettext("This visit has ended: there is nothing more to watch."));
}

async function refresh() {
  let response;
  try {
    const query = watcherId ? `?watcher=${encodeURIComponent(watcherId)}` : "";
    response = await fetch(watch.state_path + query, { credentials: "same-origin" });
  } catch {
    return null;
  }
  if (response.status === 404) {
    finish(gettext("This watch link was revoked by the machine's owner."));
    return null;
  }
  if (response.status !== 200) return null;
  const data = await response.json();
  showState(data);
  showControl(Boolean(data.control) && rfb !== null);
  if (data.state === "ended") showEnded();
  return data;
}

function connect() {
  const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
  watcherId = newWatcherId();
  inControl = false;
  controlLabel.hidden = true;
  enter.disabled = true;
  const socket = new WebSocket(`${scheme}${window.location.host}${watch.vnc_path}?watcher=${watcherId}`,
    ["binary"]);
  socket.binaryType = "arraybuffer";
  let closed = null;
  socket.addEventListener("close", (event) => { closed = event.code; });
  rfb = new RFB(screen, socket, { shared: true });
  rfb.viewOnly = true;
  rfb.focusOnClick = true;
  rfb.scaleViewport = true;
  rfb.resizeSession = false;
  rfb.background = "#000";
  rfb.addEventListener("connect", () => {
    retryMs = 500;
    screenFocus.label(rfb);
    enter.disabled = !inControl;
    say("");
    refresh();
  });
  rfb.addEventListener("disconnect", async () => {
    rfb = null;
    if (finished) return;
    if (closed === CLOSE.REVOKED || closed === CLOSE.UNKNOWN) {
      finish(gettext("This watch link was revoked by the machine's owner."));
      return;
    }
    if (closed === CLOSE.ENDED) {
      showEnded();
      return;
    }
    if (closed === CLOSE.TOO_MANY) {
      say(gettext("Too many people are watching this machine just now. Trying again in a moment…"));
    } else if (closed === CLOSE.QUEUED) {
      say(gettext("The machine has not started yet. Waiting…"));
    }
    const data = await refresh();
    if (finished || !data) return;
    const delay = closed === CLOSE.REPLACED ? 0 : retryMs;
    retryMs = Math.min(retryMs * 2, 8000);
    setTimeout(() => { if (!finished && !rfb) connect(); }, delay);
  });
}

showState(watch);
if (watch.state === "ended") {
  showEnded();
} else {
  stateTimer = setInterval(refresh, STATE_EVERY_MS);
  connect();
}
