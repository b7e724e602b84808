// The machine's sound on the live page: the session's sound WebSocket
// (a format message, then PCM) into an AudioWorklet (audio-worklet.js).
//
// Browsers let a page make sound only after the visitor has clicked or pressed
// a key on it, so nothing is opened before that: the first click or key on the
// page makes the audio context and opens the socket. The speaker button mutes
// and unmutes; muted, the socket is closed (no bytes) and the choice is kept
// for this browser. Nothing here touches the display: the sound has its own
// socket and its own thread, and any failure only shows on the button.

const MUTED_KEY = "portal.sound.muted";
import { gettext } from "./i18n.js";

// Close codes of the API (docs/api.md) that this socket may get.
const CLOSE = { TOO_SLOW: 4408, QUEUED: 4409, ENDED: 4410, REPLACED: 4412, TOO_MANY: 4429,
  FORBIDDEN: 4403, UNKNOWN: 4404 };
const FINAL = new Set([CLOSE.ENDED, CLOSE.FORBIDDEN, CLOSE.UNKNOWN]);

function storedMuted() {
  try { return window.localStorage.getItem(MUTED_KEY) === "1"; } catch { return false; }
}

function storeMuted(muted) {
  try { window.localStorage.setItem(MUTED_KEY, muted ? "1" : "0"); } catch { /* private mode */ }
}

export class Speaker {
  constructor(audioPath, button) {
    this.audioPath = audioPath;
    this.button = button;
    this.muted = storedMuted();
    this.context = null;
    this.node = null;
    this.socket = null;
    this.stopped = false;
    this.retryMs = 500;
    this.retryTimer = null;
    this.format = null;
    // What the worklet reports (received and played samples, with and without sound).
    this.stats = { received: 0, receivedSound: 0, played: 0, playedSound: 0, underruns: 0, dropped: 0 };
    // The speaker button's own click is its own business (see toggle).
    this.onGesture = (event) => { if (!button.contains(event.target)) this.gesture(); };
    window.addEventListener("pointerdown", this.onGesture, { capture: true });
    window.addEventListener("keydown", this.onGesture, { capture: true });
    button.addEventListener("click", (event) => {
      event.stopPropagation();
      this.toggle();
    });
    this.show(this.muted ? "muted" : "waiting");
  }

  show(state) {
    const words = {
      waiting: [gettext("Sound"), gettext("Sound starts when you click or press a key on this page.")],
      on: [gettext("Sound on"), gettext("Mute the machine's sound")],
      muted: [gettext("Sound off"), gettext("Hear the machine's sound")],
      busy: [gettext("Sound off"), gettext("This machine's sound is playing in too many tabs; click to try again.")],
      unavailable: [gettext("No sound"), gettext("The machine's sound is not available.")],
    }[state];
    this.button.dataset.state = state;
    this.button.setAttribute("aria-pressed", String(state === "muted"));
    this.button.querySelector(".label").textContent = words[0];
    this.button.title = words[1];
  }

  // The first click or key on the page: the browser now lets it make sound.
  async gesture() {
    window.removeEventListener("pointerdown", this.onGesture, { capture: true });
    window.removeEventListener("keydown", this.onGesture, { capture: true });
    if (!this.muted && !this.stopped) await this.start();
  }

  async toggle() {
    if (this.stopped) return;
    if (!this.context && !this.muted) {
      // The first click on the page was on the button itself: start, as any click would.
      await this.gesture();
      return;
    }
    this.muted = !this.muted;
    storeMuted(this.muted);
    if (this.muted) {
      this.disconnect();
      if (this.context) this.context.suspend();
      this.show("muted");
    } else {
      await this.start();
    }
  }

  async start() {
    try {
      if (!this.context) {
        // Made while the gesture is being handled, or the browser keeps it suspended.
        this.context = new AudioContext({ latencyHint: "interactive", sampleRate: 44100 });
        const loaded = this.context.audioWorklet.addModule(new URL("./audio-worklet.js", import.meta.url));
        this.context.resume();
        await loaded;
        this.node = new AudioWorkletNode(this.context, "portal-pcm-player", { outputChannelCount: [2] });
        this.node.port.onmessage = (event) => { this.stats = event.data; };
        this.node.connect(this.context.destination);
      } else {
        await this.context.resume();
      }
    } catch (error) {
      this.show("unavailable");
      return;
    }
    if (this.muted || this.stopped) return;
    this.show("on");
    this.connect();
  }

  connect() {
    if (this.socket || this.muted || this.stopped) return;
    clearTimeout(this.retryTimer);
    const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    const socket = new WebSocket(scheme + window.location.host + this.audioPath);
    socket.binaryType = "arraybuffer";
    this.socket = socket;
    socket.addEventListener("message", (event) => {
      if (typeof event.data === "string") {
        let message;
        try { message = JSON.parse(event.data); } catch { return; }
        if (message.type === "format") {
          this.format = message;
          this.node.port.postMessage({ format: { rate: message.rate, channels: message.channels } });
          this.retryMs = 500;
        }
        return;
      }
      if (this.format) this.node.port.postMessage({ pcm: event.data }, [event.data]);
    });
    socket.addEventListener("close", (event) => {
      if (this.socket !== socket) return;
      this.socket = null;
      if (this.muted || this.stopped) return;
      if (FINAL.has(event.code)) {
        this.stop();
        return;
      }
      if (event.code === CLOSE.TOO_MANY) {
        this.show("busy");
        this.muted = true;  // for this page only: a click on the button tries again
        return;
      }
      // Replaced (reset), too slow, a dropped network: again, at once or a little later.
      const delay = event.code === CLOSE.REPLACED || event.code === CLOSE.TOO_SLOW ? 0 : this.retryMs;
      if (delay) this.retryMs = Math.min(this.retryMs * 2, 8000);
      this.retryTimer = setTimeout(() => this.connect(), delay);
    });
  }

  disconnect() {
    clearTimeout(this.retryTimer);
    const socket = this.socket;
    this.socket = null;
    if (socket) socket.close();
    if (this.node) this.node.port.postMessage({ reset: true });
  }

  // The visit ended: no more sound.
  stop() {
    this.stopped = true;
    window.removeEventListener("pointerdown", this.onGesture, { capture: true });
    window.removeEventListener("keydown", this.onGesture, { capture: true });
    this.disconnect();
    if (this.context) this.context.close();
    this.context = null;
    this.show("unavailable");
  }
}
