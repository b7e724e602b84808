// The live machine page: noVNC on the session's display WebSocket, the
// session's events (place in line, warnings, the end) on its events
// WebSocket, the machine's sound (audio.js, on its own socket), and the
// visitor's controls (sound, fullscreen, Ctrl+Alt+Del, Reset, End,
// checkpoints, files in through a drop zone, files out as a zip), with touch
// (touch.js) and the on-screen keyboard (osk.js) for phones and tablets, the
// keyboard's way into and out of the screen (screen-focus.js) and the toolbar's
// More menu (toolbar.js). State changes, the place in line and the time-limit
// warnings are announced through live regions; the focus moves only when the
// visitor asked for it or had it nowhere.
import RFB from "/static/novnc/core/rfb.js";
import { Speaker } from "./audio.js";
import { api, csrfToken } from "./csrf.js";
import { displayTake } from "./early-display.js";
// Back and Forward to an address of this same document (the exhibit page this one
// was made from in place) load that page.
import "./page-swap.js";
import { OnScreenKeyboard } from "./osk.js";
import { ScreenFocus } from "./screen-focus.js";
import { toolbarStart } from "./toolbar.js";
import { Touchpad } from "./touch.js";
import { toolsStart } from "./tools.js";
import { escapeHtml, format, gettext, ngettext } from "./i18n.js";

const session = JSON.parse(document.getElementById("session-data").textContent);
const screen = document.getElementById("screen");
const stateLabel = document.getElementById("state");
const notice = document.getElementById("notice");
const endButton = document.getElementById("end");
const fullscreenButton = document.getElementById("fullscreen");
const ctrlAltDelButton = document.getElementById("ctrl-alt-del");
const resetButton = document.getElementById("reset");
const warningBox = document.getElementById("warning");
const saveCheckpointButton = document.getElementById("save-checkpoint");
const sandboxToggle = document.getElementById("checkpoints-toggle");
const sandboxPanel = document.getElementById("sandbox");
const checkpointList = document.getElementById("checkpoint-list");
const checkpointStatus = document.getElementById("checkpoint-status");
const drop = document.getElementById("drop");
const announcer = document.getElementById("announce");
const urgentAnnouncer = document.getElementById("announce-urgent");

const REASONS = {
  visitor: gettext("You ended this visit."),
  timeout: gettext("The visit reached its time limit."),
  idle: gettext("The machine was idle for too long."),
  crashed: gettext("The machine stopped."),
  server: gettext("The server stopped this machine."),
};
// The session's states as the bar shows them (docs/api.md, Session.state).
const STATES = {
  queued: gettext("waiting"),
  starting: gettext("starting"),
  running: gettext("running"),
  ending: gettext("ending"),
  ended: gettext("ended"),
};

let rfb = null;
let ended = false;
// The machine's sound; exposed for whoever looks at the page (and its tests).
const speaker = new Speaker(session.audio_path, document.getElementById("sound"));
window.portalSound = speaker;
let reconnectDelayMs = 500;
let resetting = false;
let events = null;
let eventsDelayMs = 500;
let warningTimer = null;
// Inside another site's iframe (from the embed page): the pages this one leads
// to stay chrome-less and frameable.
const embedded = document.body.classList.contains("embedded");
const machinePage = (url) => (embedded ? `${url}?embed=1` : url);
const display = () => rfb;
new Touchpad({ screen, display, button: document.getElementById("touchpad-toggle"), mouse: screen.dataset.mouse });
new OnScreenKeyboard({ panel: document.getElementById("osk"), toggle: document.getElementById("osk-toggle"), display });
const screenFocus = new ScreenFocus({
  screen, enter: document.getElementById("screen-enter"), display, also: [document.getElementById("osk")],
});
toolbarStart({ toggle: document.getElementById("more-toggle"), menu: document.getElementById("more-menu") });
// Where the page may not fill the screen (an iframe without allow="fullscreen", an iPhone).
if (!document.fullscreenEnabled) fullscreenButton.hidden = true;

// What a screen reader hears when the state changes (the notice says the rest).
const STATE_WORDS = {
  running: gettext("The machine is running."),
  starting: gettext("The machine is starting."),
  ending: gettext("Ending the visit…"),
};

function announce(text, { urgent = false } = {}) {
  const region = urgent ? urgentAnnouncer : announcer;
  // Emptied first, so the same words said again are heard again.
  region.textContent = "";
  setTimeout(() => { region.textContent = text; }, 50);
}

let announcedState = null;

function showState(state, text) {
  stateLabel.dataset.state = state;
  stateLabel.textContent = text || STATES[state] || state;
  // Said once it is so ("running" once the screen is there, not while connecting).
  if ((!text || text === STATES[state]) && state !== announcedState && STATE_WORDS[state]) {
    announcedState = state;
    announce(STATE_WORDS[state]);
  }
}

function showNotice(html) {
  notice.innerHTML = html;
  notice.hidden = false;
}

function showEnded(data) {
  ended = true;
  const reason = data.ended_reason || "visitor";
  showState("ended", STATES.ended);
  const why = data.detail || REASONS[reason] || "";
  const stopped = reason === "crashed" ? gettext("The machine stopped.") : gettext("This machine has ended.");
  showNotice(
    `<p><strong>${escapeHtml(stopped)}</strong></p><p>${escapeHtml(why)}</p>` +
    `<p>${escapeHtml(gettext("Everything done in this visit has been discarded."))}</p>` +
    `<p><button id="restart" class="primary">${escapeHtml(gettext("Start a new machine"))}</button> ` +
    `<a href="/exhibits/${encodeURIComponent(data.exhibit || session.exhibit)}/${embedded ? "embed" : ""}">` +
    `${escapeHtml(gettext("Back to the exhibit"))}</a></p>`
  );
  const restartButton = document.getElementById("restart");
  restartButton.addEventListener("click", restart);
  // The screen (and any focus in it) is gone: the focus goes to what comes next.
  const focusLost = screenFocus.idle();
  hideWarning();
  if (events) {
    const old = events;
    events = null;
    old.close();
  }
  endButton.disabled = true;
  ctrlAltDelButton.disabled = true;
  resetButton.disabled = true;
  speaker.stop();
  saveCheckpointButton.disabled = true;
  sandboxPanel.hidden = true;
  if (rfb) {
    const old = rfb;
    rfb = null;
    old.disconnect();
  }
  screenFocus.label(null);
  if (focusLost) restartButton.focus();
}

async function restart() {
  const button = document.getElementById("restart");
  button.disabled = true;
  const { status, data } = await api("POST", `/api/exhibits/${encodeURIComponent(session.exhibit)}/sessions`);
  if ((status === 201 || status === 409) && data && data.page_url) {
    window.location.assign(machinePage(data.page_url));
    return;
  }
  button.disabled = false;
  const detail = data && data.detail ? data.detail : gettext("The machine could not be started.");
  showNotice(`<p>${escapeHtml(detail)}</p>` +
    `<p><button id="restart" class="primary">${escapeHtml(gettext("Try again"))}</button></p>`);
  document.getElementById("restart").addEventListener("click", restart);
}

let lastPosition = null;

function showQueued(data) {
  const position = data.queue_position;
  showState("queued", format(gettext("waiting: number %(position)s in line"), { position }));
  const minutes = Math.max(1, Math.round((data.queue_wait_s || 0) / 60));
  const wait = format(ngettext("%(minutes)s minute", "%(minutes)s minutes", minutes), { minutes });
  const number = format(gettext("number %(position)s"), { position });
  const place = document.getElementById("queue-position");
  if (place && !notice.hidden) {
    // Still in line: the numbers change in place, unannounced by the notice (its
    // own live region would say them without their sentence); a move up the line
    // is said once, as a sentence.
    if (position !== lastPosition) {
      announce(format(gettext("You are now number %(position)s in line."), { position }));
    }
    place.textContent = number;
    document.getElementById("queue-wait").textContent = wait;
  } else {
    // The notice (a live region) says the whole of it the first time.
    showNotice(
      `<p><strong>${escapeHtml(gettext("Every machine is in use."))}</strong></p>` +
      `<p>${format(escapeHtml(gettext("You are %(place)s in line; the wait is about %(wait)s.")), {
        place: `<strong id="queue-position" aria-live="off">${escapeHtml(number)}</strong>`,
        wait: `<span id="queue-wait" aria-live="off">${escapeHtml(wait)}</span>`,
      })}</p>` +
      `<p>${escapeHtml(gettext("Keep this page open: your machine starts here by itself."))}</p>`
    );
  }
  lastPosition = data.queue_position;
}

function hideWarning({ replaced = false } = {}) {
  if (warningTimer) clearInterval(warningTimer);
  warningTimer = null;
  if (!warningBox.hidden && !replaced) {
    // The button that had the focus goes; the focus goes back where the keyboard's way in is.
    const hadFocus = warningBox.contains(document.activeElement);
    warningBox.hidden = true;
    if (hadFocus) document.getElementById("screen-enter").focus();
  }
}

function showWarning(reason, secondsLeft) {
  // A warning in place of another: a focus on its button stays on the new one.
  const onStillHere = document.activeElement?.id === "still-here";
  hideWarning({ replaced: true });
  let left = secondsLeft;
  // The countdown ticks on the page only; a screen reader hears the warning once,
  // with what to do about it. The time limit is the shared machine's essential
  // limit: no button extends it.
  if (reason === "idle") {
    warningBox.innerHTML =
      `<span id="warning-text">${format(escapeHtml(gettext("Nobody has used this machine for a while. " +
        "It switches off in %(seconds)s s.")), { seconds: `<strong id="countdown">${left}</strong>` })}</span> ` +
      `<button id="still-here" type="button" class="primary">${escapeHtml(gettext("I'm still here"))}</button>`;
    document.getElementById("still-here").addEventListener("click", () => {
      if (events && events.readyState === WebSocket.OPEN) events.send(JSON.stringify({ type: "active" }));
      announce(gettext("The machine stays on."));
      if (rfb) rfb.focus();
    });
    if (onStillHere) document.getElementById("still-here").focus();
    announce(format(gettext("Nobody has used this machine for a while. It switches off in %(seconds)s " +
      "seconds. Press any key on the machine, or the I'm still here button, to keep it."), { seconds: left }),
    { urgent: true });
  } else {
    warningBox.innerHTML =
      `<span id="warning-text">${format(escapeHtml(gettext("This visit reaches its time limit: the machine " +
        "switches off in %(seconds)s s.")), { seconds: `<strong id="countdown">${left}</strong>` })}</span>`;
    if (onStillHere) document.getElementById("screen-enter").focus();
    announce(format(gettext("This visit reaches its time limit: the machine switches off in %(seconds)s " +
      "seconds."), { seconds: left }), { urgent: true });
  }
  warningBox.dataset.reason = reason;
  warningBox.hidden = false;
  warningTimer = setInterval(() => {
    left = Math.max(0, left - 1);
    const countdown = document.getElementById("countdown");
    if (countdown) countdown.textContent = String(left);
  }, 1000);
}

function onSessionState(data) {
  if (data.state === "ended") {
    showEnded(data);
  } else if (data.state === "queued") {
    showQueued(data);
  } else if (!rfb && !resetting) {
    showState(data.state, data.state === "running" ? gettext("connecting…") : null);
    notice.hidden = true;
    connect();
  }
}

// What other modules (screen-text.js) send on the events socket.
// What other modules ask to send before the events socket is open goes once it is.
const eventsPending = [];
window.addEventListener("portal:events-send", (event) => {
  if (events && events.readyState === WebSocket.OPEN) events.send(JSON.stringify(event.detail));
  else eventsPending.push(event.detail);
});

function listen() {
  const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
  events = new WebSocket(scheme + window.location.host + session.events_path);
  events.addEventListener("open", () => {
    eventsDelayMs = 500;
    for (const detail of eventsPending.splice(0)) events.send(JSON.stringify(detail));
    // Other modules (screen-text.js) say what they listen to again on a new socket.
    window.dispatchEvent(new CustomEvent("portal:events-open"));
  });
  events.addEventListener("message", (message) => {
    let data;
    try { data = JSON.parse(message.data); } catch { return; }
    // The visitor's tools (tools.js) follow the same events.
    window.dispatchEvent(new CustomEvent("portal:event", { detail: data }));
    if (data.type === "state") onSessionState(data);
    else if (data.type === "warning") showWarning(data.reason, data.seconds_left);
    else if (data.type === "warning_cleared") hideWarning();
    else if (data.type === "ended") showEnded({ ...data, ended_reason: data.reason, exhibit: session.exhibit });
  });
  events.addEventListener("close", () => {
    if (ended || !events) return;
    events = null;
    // Lost, not ended: listen again (the state message on reconnect says what changed).
    setTimeout(() => { if (!ended) listen(); }, eventsDelayMs);
    eventsDelayMs = Math.min(eventsDelayMs * 2, 8000);
  });
}

async function refresh() {
  const { status, data } = await api("GET", `/api/sessions/${session.id}`);
  if (status === 404) {
    showEnded({ ended_reason: "server", detail: gettext("This session no longer exists."), exhibit: session.exhibit });
    return null;
  }
  if (status === 200 && data.state === "ended") {
    showEnded(data);
  } else if (status === 200 && data.state !== "running") {
    showState(data.state);
  }
  return data;
}

// What the display socket's close code (docs/api.md) means for this page.
const CLOSE = {
  TOO_SLOW: 4408, QUEUED: 4409, ENDED: 4410, REPLACED: 4412, TOO_MANY: 4429,
  FORBIDDEN: 4403, UNKNOWN: 4404, UNSUPPORTED: 4400, TOO_BIG: 4413,
};
const CLOSE_WORDS = {
  [CLOSE.TOO_SLOW]: gettext("Your connection could not keep up with the screen. Reconnecting…"),
  [CLOSE.TOO_MANY]: gettext("This machine is already open in too many tabs or windows. " +
    "Close one of them, then press Reconnect."),
  [CLOSE.FORBIDDEN]: gettext("This machine belongs to another browser, or this page may not show it."),
  [CLOSE.UNKNOWN]: gettext("This machine no longer exists."),
  [CLOSE.UNSUPPORTED]: gettext("The screen's connection was refused by the server. Reconnecting…"),
  [CLOSE.TOO_BIG]: gettext("Something sent to the machine was too large and was refused. Reconnecting…"),
};
let lastClose = null;

function showReconnectOffer(words) {
  showNotice(`<p>${escapeHtml(words)}</p><p><button id="reconnect" class="primary">${escapeHtml(gettext("Reconnect"))}</button></p>`);
  document.getElementById("reconnect").addEventListener("click", () => {
    notice.hidden = true;
    if (!rfb && !ended) connect();
  });
}

function connect() {
  const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
  // The socket is made here, not by noVNC, so the page can read its close code; after
  // a start on the exhibit page, it is the one that page opened, with the display
  // client it made on it (early-display.js), whose screen is this page's.
  const early = displayTake(session.vnc_path);
  const client = early && early.client && early.client.target === screen ? early.client : null;
  if (early && early.client && !client) early.client.rfb.disconnect();
  const socket = client ? null : (early ? early.socket
    : new WebSocket(scheme + window.location.host + session.vnc_path, ["binary"]));
  lastClose = client ? early.closed : null;
  if (socket) socket.binaryType = "arraybuffer";
  (socket || early.socket).addEventListener("close", (event) => {
    lastClose = { code: event.code, reason: event.reason };
  });
  rfb = client ? client.rfb : new RFB(screen, socket, { shared: true });
  const mine = rfb;
  rfb.scaleViewport = true;
  rfb.resizeSession = false;
  rfb.focusOnClick = true;
  rfb.background = "#000";
  const connected = () => {
    reconnectDelayMs = 500;
    notice.hidden = true;
    const giveKeys = screenFocus.idle();
    screenFocus.label(mine);
    showState("running", STATES.running);
    if (giveKeys) mine.focus();
  };
  const disconnected = async () => {
    if (rfb === mine) rfb = null;
    else return;
    const code = lastClose ? lastClose.code : null;
    if (ended || resetting) return;
    if (code === CLOSE.REPLACED) {
      // Reset (here or in another tab): the new machine is there; connect at once.
      connect();
      return;
    }
    if (code === CLOSE.TOO_MANY) {
      showState("running", gettext("not shown here"));
      showReconnectOffer(CLOSE_WORDS[code]);
      return;
    }
    const data = await refresh();
    if (ended || !data) return;
    if (code === CLOSE.QUEUED || data.state === "queued") {
      // Still waiting in line: the events socket says when the machine is there.
      if (data.state === "queued") showQueued(data);
      return;
    }
    if (code === CLOSE.FORBIDDEN || code === CLOSE.UNKNOWN) {
      showEnded({ ended_reason: "server", detail: CLOSE_WORDS[code], exhibit: session.exhibit });
      return;
    }
    if (CLOSE_WORDS[code]) showNotice(`<p>${escapeHtml(CLOSE_WORDS[code])}</p>`);
    // The network dropped, or the display broke, but the machine lives: reconnect
    // within the grace period.
    showState(data.state, gettext("reconnecting…"));
    setTimeout(() => { if (!ended && !rfb) connect(); }, reconnectDelayMs);
    reconnectDelayMs = Math.min(reconnectDelayMs * 2, 8000);
  };
  if (client && client.disconnected) {
    disconnected();
    return;
  }
  rfb.addEventListener("connect", connected);
  rfb.addEventListener("disconnect", disconnected);
  // Adopted already connected, on a page changed in place: once every script of the
  // page has run (what they listen for is said then).
  if (client && client.connected) window.addEventListener("portal:page-scripts-ran", connected, { once: true });
}

endButton.addEventListener("click", async () => {
  endButton.disabled = true;
  showState("ending", gettext("ending…"));
  ended = true;
  if (rfb) {
    const old = rfb;
    rfb = null;
    old.disconnect();
  }
  await api("DELETE", `/api/sessions/${session.id}`);
  const data = await refresh();
  if (data) showEnded(data);
});

resetButton.addEventListener("click", async () => {
  resetButton.disabled = true;
  resetting = true;
  showState("starting", gettext("resetting…"));
  announcedState = null;
  announce(gettext("Resetting the machine…"));
  if (rfb) {
    const old = rfb;
    rfb = null;
    old.disconnect();
  }
  const { status, data } = await api("POST", `/api/sessions/${session.id}/reset`);
  resetting = false;
  resetButton.disabled = false;
  // A reset discards the machine's checkpoints and disks.
  renderCheckpoints([]);
  if (status === 200) {
    connect();
  } else {
    const now = await refresh();
    if (now && !ended) connect();
    if (data && data.detail) showNotice(`<p>${escapeHtml(data.detail)}</p>`);
  }
});

// --- Checkpoints -------------------------------------------------------------

function renderCheckpoints(checkpoints) {
  checkpointList.innerHTML = "";
  for (const checkpoint of checkpoints) {
    const item = document.createElement("li");
    const when = new Date(checkpoint.created_at).toLocaleTimeString();
    item.innerHTML = `<span>${escapeHtml(checkpoint.label)}</span> <small>${escapeHtml(when)}</small>` +
      `<button data-action="restore">${escapeHtml(gettext("Go back"))}</button>` +
      `<button data-action="delete">${escapeHtml(gettext("Delete"))}</button>`;
    item.querySelector('[data-action="restore"]').addEventListener("click", () => restoreCheckpoint(checkpoint));
    item.querySelector('[data-action="delete"]').addEventListener("click", () => deleteCheckpoint(checkpoint));
    checkpointList.appendChild(item);
  }
  if (!checkpoints.length) checkpointList.innerHTML = `<li class="hint">${escapeHtml(gettext("None yet."))}</li>`;
}

async function loadCheckpoints() {
  const { status, data } = await api("GET", `/api/sessions/${session.id}/checkpoints`);
  if (status === 200) renderCheckpoints(data.checkpoints);
}

async function showSandbox(open) {
  sandboxPanel.hidden = !open;
  sandboxToggle.setAttribute("aria-expanded", String(open));
  if (open) await loadCheckpoints();
}

async function saveCheckpoint() {
  saveCheckpointButton.disabled = true;
  const began = performance.now();
  const { status, data } = await api("POST", `/api/sessions/${session.id}/checkpoints`, {});
  saveCheckpointButton.disabled = false;
  // The list shows the new checkpoint by the time the status says it was saved.
  await showSandbox(true);
  checkpointStatus.textContent = status === 201
    ? format(gettext("Saved “%(label)s” in %(ms)s ms."), { label: data.label, ms: Math.round(performance.now() - began) })
    : (data && data.detail) || gettext("The checkpoint could not be saved.");
  if (rfb) rfb.focus();
}

async function restoreCheckpoint(checkpoint) {
  const began = performance.now();
  checkpointStatus.textContent = format(gettext("Going back to “%(label)s”…"), { label: checkpoint.label });
  const { status, data } = await api("POST", `/api/sessions/${session.id}/checkpoints/${checkpoint.id}/restore`);
  // The machine is the same: the display stays connected and shows the screen of that moment.
  checkpointStatus.textContent = status === 200
    ? format(gettext("Back at “%(label)s” in %(ms)s ms."),
      { label: checkpoint.label, ms: Math.round(performance.now() - began) })
    : (data && data.detail) || gettext("The machine could not go back.");
  if (rfb) rfb.focus();
}

async function deleteCheckpoint(checkpoint) {
  const { status, data } = await api("DELETE", `/api/sessions/${session.id}/checkpoints/${checkpoint.id}`);
  if (status !== 204) checkpointStatus.textContent = (data && data.detail) || gettext("It could not be deleted.");
  loadCheckpoints();
}

saveCheckpointButton.addEventListener("click", saveCheckpoint);
sandboxToggle.addEventListener("click", () => showSandbox(sandboxPanel.hidden));

// --- Files in: a drop zone -----------------------------------------------------

async function bringFiles(files) {
  const result = document.getElementById("drop-result");
  if (!files.length) return;
  const form = new FormData();
  for (const file of files) form.append("files", file, file.name);
  result.textContent = gettext("Making a floppy with your files…");
  const response = await fetch(`/api/sessions/${session.id}/media`, {
    method: "POST", credentials: "same-origin", headers: { "X-CSRFToken": csrfToken() }, body: form,
  });
  let data = null;
  try { data = await response.json(); } catch { data = null; }
  if (response.status !== 201) {
    result.textContent = (data && data.detail) || gettext("The files could not be brought in.");
    return;
  }
  const rows = data.files.map((file) =>
    `<tr><td>${escapeHtml(file.dos_name)}</td><td>${escapeHtml(file.name)}</td><td>${file.bytes}</td></tr>`).join("");
  result.innerHTML = `<p>${escapeHtml(format(gettext("In drive %(drive)s: (DOS needs a moment to notice a new disk)."),
    { drive: data.drive.toUpperCase() }))}</p>` +
    `<table class="drop-map"><tr><th>${escapeHtml(gettext("DOS name"))}</th><th>${escapeHtml(gettext("your file"))}</th>` +
    `<th>${escapeHtml(gettext("bytes"))}</th></tr>${rows}</table>`;
  if (rfb) rfb.focus();
}

if (drop) {
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    bringFiles([...event.dataTransfer.files]);
  });
  document.getElementById("file-input").addEventListener("change", (event) => {
    bringFiles([...event.target.files]);
    event.target.value = "";
  });
}

fullscreenButton.addEventListener("click", () => {
  const target = document.documentElement;
  if (document.fullscreenElement) {
    document.exitFullscreen();
  } else if (target.requestFullscreen) {
    target.requestFullscreen().then(() => rfb && rfb.focus());
  }
});

ctrlAltDelButton.addEventListener("click", () => {
  if (rfb) {
    rfb.sendCtrlAltDel();
    rfb.focus();
  }
});

toolsStart(session, () => rfb);

if (session.state === "ended") {
  showEnded(session);
} else {
  listen();
  if (session.state === "queued") {
    showQueued(session);
  } else {
    showState(session.state, session.state === "running" ? gettext("connecting…") : null);
    connect();
  }
}
