// The machine page's recording: the Record button, the "Recording" indicator with its
// clock and Stop button while one is made, the notice with the recording's link when
// it stops (by the visitor, a limit, or the visit's end); and the exhibit's tour,
// played while the visitor waits in line (their place stays in the notice above it).
import { api } from "./csrf.js";
import { escapeHtml, gettext } from "./i18n.js";
import { clock, playersStart } from "./player.js";

const data = JSON.parse(document.getElementById("session-data").textContent);
const recordButton = document.getElementById("record");
const indicator = document.getElementById("recording-indicator");
const stopButton = document.getElementById("recording-stop");
const elapsed = document.getElementById("recording-clock");
const result = document.getElementById("recording-result");
const lineTour = document.getElementById("line-tour");
let ticking = null;

function recordingShown(started) {
  const since = Date.parse(started) || Date.now();
  indicator.hidden = false;
  if (recordButton) recordButton.hidden = true;
  clearInterval(ticking);
  const tick = () => { elapsed.textContent = clock((Date.now() - since) / 1000); };
  tick();
  ticking = setInterval(tick, 1000);
}

function recordingHidden() {
  clearInterval(ticking);
  ticking = null;
  if (indicator) indicator.hidden = true;
  if (recordButton) {
    recordButton.hidden = false;
    recordButton.disabled = false;
  }
}

function stoppedSay(recording, reason) {
  recordingHidden();
  if (!result) return;
  if (!recording) {
    result.innerHTML = `<p>${escapeHtml(gettext("The recording failed and was not kept."))}</p>`;
    result.hidden = false;
    return;
  }
  const why = reason === "size" ? gettext("The recording reached its size limit and stopped; what it has is kept.")
    : reason === "length" ? gettext("The recording reached its length limit and stopped; what it has is kept.")
      : gettext("The recording has stopped.");
  const kept = recording.expires_at ? gettext("It is kept on the server for an hour after your visit.") : "";
  result.innerHTML = `<p>${escapeHtml(why)} ${escapeHtml(kept)}</p>` +
    `<p><a id="recording-link" href="${escapeHtml(recording.url)}" target="_blank" rel="noopener">` +
    `${escapeHtml(gettext("Watch the recording"))}</a> · ` +
    `<a href="/api/recordings/${escapeHtml(recording.id)}.webm" target="_blank" rel="noopener">` +
    `${escapeHtml(gettext("Download as video"))}</a></p>`;
  result.hidden = false;
}

if (recordButton) {
  recordButton.addEventListener("click", async () => {
    recordButton.disabled = true;
    const { status, data: answer } = await api("POST", `/api/sessions/${data.id}/recording`);
    if (status === 201) {
      recordingShown(answer.started_at);
    } else {
      recordButton.disabled = false;
      if (result) {
        result.innerHTML = `<p>${escapeHtml((answer && answer.detail) || gettext("The recording could not be started."))}</p>`;
        result.hidden = false;
      }
    }
  });
}

if (stopButton) {
  stopButton.addEventListener("click", async () => {
    stopButton.disabled = true;
    const { status, data: answer } = await api("DELETE", `/api/sessions/${data.id}/recording`);
    stopButton.disabled = false;
    if (status === 200) stoppedSay({ ...answer, expires_at: indicator.dataset.visitor === "1" }, null);
    else recordingHidden();
  });
}

let tourPlayers = [];

function lineTourFollow(state) {
  if (!lineTour) return;
  const waiting = state === "queued";
  if (waiting && lineTour.hidden) {
    lineTour.hidden = false;
    tourPlayers = playersStart(lineTour);
  } else if (!waiting && !lineTour.hidden) {
    lineTour.hidden = true;
    tourPlayers.forEach((player) => player.pause());
  }
}

window.addEventListener("portal:event", (event) => {
  const message = event.detail;
  if (message.type === "recording" && message.state === "started") {
    recordingShown(message.recording.started_at);
  } else if (message.type === "recording" && message.state === "stopped") {
    stoppedSay(message.recording, message.reason);
  } else if (message.type === "state") {
    lineTourFollow(message.state);
  } else if (message.type === "ended") {
    recordingHidden();
    if (recordButton) recordButton.hidden = true;
    lineTourFollow("ended");
  }
});

if (indicator && indicator.dataset.started) recordingShown(indicator.dataset.started);
lineTourFollow(data.state);
