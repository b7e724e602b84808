// The live machine page: noVNC on the session's display WebSocket, the
// session's state, and the visitor's controls (fullscreen, Ctrl+Alt+Del, End).
import RFB from "/static/novnc/core/rfb.js";
import { api } from "./csrf.js";

const session = JSON.parse(document.getElementById("session-data").textContent);
const screen = document.getElementById("screen");
const stateLabel = document.getElementById("state");
const notice = document.getElementById("notice");
const endButton = document.getElementById("end");
const fullscreenButton = document.getElementById("fullscreen");
const ctrlAltDelButton = document.getElementById("ctrl-alt-del");
const resetButton = document.getElementById("reset");

const REASONS = {
  visitor: "You ended this visit.",
  timeout: "The visit reached its time limit.",
  idle: "The machine was idle for too long.",
  crashed: "The machine stopped.",
  server: "The server stopped this machine.",
};

let rfb = null;
let ended = false;
let reconnectDelayMs = 500;
let resetting = false;

function showState(state, text) {
  stateLabel.dataset.state = state;
  stateLabel.textContent = text || state;
}

function showNotice(html) {
  notice.innerHTML = html;
  notice.hidden = false;
}

function escapeHtml(text) {
  const div = document.createElement("div");
  div.textContent = text;
  return div.innerHTML;
}

function showEnded(data) {
  ended = true;
  const reason = data.ended_reason || "visitor";
  showState("ended", `ended: ${reason}`);
  const why = data.detail || REASONS[reason] || "";
  showNotice(
    `<p><strong>This machine has ended.</strong></p><p>${escapeHtml(why)}</p>` +
    `<p>Everything done in this visit has been discarded.</p>` +
    `<p><a href="/exhibits/${encodeURIComponent(data.exhibit)}/">Start again</a></p>`
  );
  endButton.disabled = true;
  ctrlAltDelButton.disabled = true;
  resetButton.disabled = true;
  if (rfb) {
    const old = rfb;
    rfb = null;
    old.disconnect();
  }
}

async function refresh() {
  const { status, data } = await api("GET", `/api/sessions/${session.id}`);
  if (status === 404) {
    showEnded({ ended_reason: "server", detail: "This session no longer exists.", exhibit: session.exhibit });
    return null;
  }
  if (status === 200 && data.state === "ended") {
    showEnded(data);
  } else if (status === 200 && data.state !== "running") {
    showState(data.state);
  }
  return data;
}

function connect() {
  const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
  rfb = new RFB(screen, scheme + window.location.host + session.vnc_path, {
    wsProtocols: ["binary"],
    shared: true,
  });
  rfb.scaleViewport = true;
  rfb.resizeSession = false;
  rfb.focusOnClick = true;
  rfb.background = "#000";
  rfb.addEventListener("connect", () => {
    reconnectDelayMs = 500;
    notice.hidden = true;
    showState("running", "running");
    rfb.focus();
  });
  rfb.addEventListener("disconnect", async () => {
    rfb = null;
    if (ended || resetting) return;
    const data = await refresh();
    if (ended || !data) return;
    // The network dropped but the machine lives: reconnect within the grace period.
    showState(data.state, "reconnecting…");
    setTimeout(() => { if (!ended) connect(); }, reconnectDelayMs);
    reconnectDelayMs = Math.min(reconnectDelayMs * 2, 8000);
  });
}

endButton.addEventListener("click", async () => {
  endButton.disabled = true;
  showState("ending", "ending…");
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
  showState("starting", "resetting…");
  if (rfb) {
    const old = rfb;
    rfb = null;
    old.disconnect();
  }
  const { status, data } = await api("POST", `/api/sessions/${session.id}/reset`);
  resetting = false;
  resetButton.disabled = false;
  if (status === 200) {
    connect();
  } else {
    const now = await refresh();
    if (now && !ended) connect();
    if (data && data.detail) showNotice(`<p>${escapeHtml(data.detail)}</p>`);
  }
});

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

if (session.state === "ended") {
  showEnded(session);
} else {
  showState(session.state, session.state === "running" ? "connecting…" : session.state);
  connect();
}
