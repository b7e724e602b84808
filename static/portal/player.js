// A recorded visit played with noVNC: the recording's updates are fed to noVNC as if
// they came from a machine (a channel of this script's own in place of a WebSocket).
// The recording is in segments, each starting with a full picture; a seek inflates
// the segment before the time asked for (the browser does: it is served gzip-encoded)
// and feeds it up to that time at once. Play, pause, seek (the slider, its keys),
// speed, sound (an <audio> element kept at the recording's time), fullscreen.
// Markup: templates/portal/player.html; one player per element with data-player.
import RFB from "/static/novnc/core/rfb.js";
import { format, gettext } from "./i18n.js";

const RFB_VERSION = new TextEncoder().encode("RFB 003.008\n");
const TICK_MS = 25;
// Segments kept in memory (the one playing, the next, one behind for seeks).
const SEGMENTS_KEPT = 4;

// What noVNC takes for a WebSocket: it sends the handshake and update requests (which
// go nowhere) and gets the server's side from the player.
class RecordingChannel {
  constructor(width, height) {
    this.binaryType = "arraybuffer";
    this.protocol = "";
    this.readyState = "connecting";
    this.onopen = null;
    this.onmessage = null;
    this.onclose = null;
    this.onerror = null;
    this._sent = 0;
    this._stage = 0;
    this._size = [width, height];
    this.ready = new Promise((resolve) => { this._ready = resolve; });
    setTimeout(() => {
      this.readyState = "open";
      if (this.onopen) this.onopen();
      this.deliver(RFB_VERSION);
    }, 0);
  }

  send(data) {
    this._sent += data.byteLength ?? data.length;
    // The handshake's answers, as a VNC server without a password gives them.
    const steps = [[12, [1, 1]], [13, [0, 0, 0, 0]], [14, null]];
    while (this._stage < steps.length && this._sent >= steps[this._stage][0]) {
      const answer = steps[this._stage][1];
      this._stage += 1;
      setTimeout(() => this.deliver(answer ? new Uint8Array(answer) : this._serverInit()), 0);
    }
  }

  _serverInit() {
    const name = new TextEncoder().encode("recording");
    const message = new Uint8Array(24 + name.length);
    const view = new DataView(message.buffer);
    view.setUint16(0, this._size[0]);
    view.setUint16(2, this._size[1]);
    // 32 bits, depth 24, little-endian, true colour, 255 each, red 0, green 8, blue 16.
    message.set([32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 0, 8, 16], 4);
    view.setUint32(20, name.length);
    message.set(name, 24);
    setTimeout(() => this._ready(), 0);
    return message;
  }

  deliver(bytes) {
    if (this.readyState !== "open" || !this.onmessage) return;
    const data = bytes.buffer.byteLength === bytes.byteLength && bytes.byteOffset === 0
      ? bytes.buffer : bytes.slice().buffer;
    this.onmessage({ data });
  }

  close() {
    if (this.readyState === "closed") return;
    this.readyState = "closed";
    if (this.onclose) this.onclose({ code: 1000, reason: "", wasClean: true });
  }
}

function desktopSize(width, height) {
  const message = new Uint8Array(16);
  const view = new DataView(message.buffer);
  view.setUint16(2, 1);
  view.setUint16(8, width);
  view.setUint16(10, height);
  view.setInt32(12, -223);
  return message;
}

function records(buffer) {
  const list = [];
  const view = new DataView(buffer);
  let offset = 0;
  while (offset + 8 <= buffer.byteLength) {
    const at = view.getUint32(offset);
    const length = view.getUint32(offset + 4);
    offset += 8;
    list.push({ at, data: new Uint8Array(buffer, offset, length) });
    offset += length;
  }
  return list;
}

export function clock(seconds) {
  const whole = Math.max(0, Math.floor(seconds));
  return `${Math.floor(whole / 60)}:${String(whole % 60).padStart(2, "0")}`;
}

export class RecordingPlayer {
  constructor(root) {
    this.root = root;
    this.base = root.dataset.player;
    this.loop = root.dataset.loop === "1";
    this.screen = root.querySelector(".player-screen");
    this.playButton = root.querySelector(".player-play");
    this.slider = root.querySelector(".player-seek");
    this.time = root.querySelector(".player-time");
    this.speedSelect = root.querySelector(".player-speed");
    this.soundButton = root.querySelector(".player-sound");
    this.fullscreenButton = root.querySelector(".player-fullscreen");
    this.status = root.querySelector(".player-status");
    this.index = null;
    this.segments = new Map();
    this.current = -1;       // the segment being fed
    this.next = 0;           // its next record
    this.position = 0;       // ms into the recording
    this.speed = 1;
    this.playing = false;
    this.muted = root.dataset.muted === "1";
    this.audio = null;
    this.size = null;
    this.rfb = null;
    this._timer = null;
    this._seeking = Promise.resolve();
  }

  async start() {
    this.state("loading");
    const answer = await fetch(`${this.base}/index`, { credentials: "same-origin" });
    if (!answer.ok) {
      let detail = gettext("This recording cannot be played.");
      try { detail = (await answer.json()).detail || detail; } catch { /* not JSON */ }
      this.fail(detail);
      return;
    }
    this.index = await answer.json();
    const first = this.index.segments[0];
    if (!first) {
      this.fail(gettext("This recording is empty."));
      return;
    }
    this.duration = this.index.duration_ms;
    if (this.slider) {
      this.slider.max = String(this.duration / 1000);
      this.slider.step = "0.1";
      this.slider.addEventListener("input", () => this.seek(Number(this.slider.value) * 1000));
    }
    if (this.index.sound) {
      this.audio = new Audio(this.index.sound);
      this.audio.preload = "auto";
      this.audio.muted = this.muted;
    } else if (this.soundButton) {
      this.soundButton.hidden = true;
    }
    this.connect(first.width, first.height);
    await this.channel.ready;
    this.controls();
    await this.seek(0);
    if (this.root.dataset.autoplay === "1") this.play();
    else this.state("paused");
  }

  connect(width, height) {
    this.channel = new RecordingChannel(width, height);
    this.size = [width, height];
    this.rfb = new RFB(this.screen, this.channel, { shared: true });
    this.rfb.viewOnly = true;
    this.rfb.scaleViewport = true;
    this.rfb.background = "#000";
    this.rfb.focusOnClick = false;
  }

  controls() {
    if (this.playButton) this.playButton.addEventListener("click", () => (this.playing ? this.pause() : this.play()));
    if (this.speedSelect) {
      this.speedSelect.addEventListener("change", () => {
        this.rebase();
        this.speed = Number(this.speedSelect.value) || 1;
        if (this.audio) this.audio.playbackRate = this.speed;
      });
    }
    if (this.soundButton) {
      this.soundButton.setAttribute("aria-pressed", String(!this.muted));
      this.soundButton.addEventListener("click", () => this.setMuted(!this.muted));
    }
    if (this.fullscreenButton) {
      this.fullscreenButton.addEventListener("click", () => {
        if (document.fullscreenElement) document.exitFullscreen();
        else if (this.root.requestFullscreen) this.root.requestFullscreen();
      });
    }
    // A tour is muted until the visitor clicks it.
    if (this.root.dataset.tour === "1") {
      this.screen.addEventListener("click", () => { if (this.muted) this.setMuted(false); });
    }
  }

  setMuted(muted) {
    this.muted = muted;
    if (this.soundButton) this.soundButton.setAttribute("aria-pressed", String(!muted));
    if (this.audio) {
      this.audio.muted = muted;
      if (!muted && this.playing) this.audioFollow(true);
    }
  }

  state(name) {
    this.root.dataset.state = name;
    if (this.playButton) {
      const playing = name === "playing";
      this.playButton.textContent = playing ? gettext("Pause") : gettext("Play");
      this.playButton.setAttribute("aria-pressed", String(playing));
    }
  }

  fail(detail) {
    this.state("failed");
    if (this.status) {
      this.status.textContent = detail;
      this.status.hidden = false;
    }
    this.root.querySelectorAll("button, input, select").forEach((control) => { control.disabled = true; });
  }

  async segment(number) {
    if (this.segments.has(number)) return this.segments.get(number);
    const answer = await fetch(`${this.base}/segments/${number}`, { credentials: "same-origin" });
    if (!answer.ok) throw new Error(`segment ${number}: ${answer.status}`);
    const list = records(await answer.arrayBuffer());
    this.segments.set(number, list);
    while (this.segments.size > SEGMENTS_KEPT) {
      const oldest = [...this.segments.keys()].find((kept) => kept !== number && kept !== this.current);
      this.segments.delete(oldest);
    }
    return list;
  }

  segmentAt(ms) {
    const segments = this.index.segments;
    let found = 0;
    for (let number = 0; number < segments.length; number += 1) {
      if (segments[number].start_ms <= ms) found = number;
    }
    return found;
  }

  // Feed what was recorded up to `ms` from where the player is; a seek backwards (or
  // into another segment) starts again at the segment's full picture.
  async feedTo(ms) {
    const target = this.segmentAt(ms);
    if (target !== this.current || ms < this.position) {
      const list = await this.segment(target);
      const { width, height } = this.index.segments[target];
      if (!this.size || this.size[0] !== width || this.size[1] !== height) {
        this.channel.deliver(desktopSize(width, height));
        this.size = [width, height];
      }
      this.current = target;
      this.next = 0;
      this.list = list;
    }
    while (true) {
      while (this.next < this.list.length && this.list[this.next].at <= ms) {
        const record = this.list[this.next];
        this.sizeFollow(record.data);
        this.channel.deliver(record.data);
        this.next += 1;
      }
      const following = this.current + 1;
      if (this.next < this.list.length || following >= this.index.segments.length
          || this.index.segments[following].start_ms > ms) break;
      this.list = await this.segment(following);
      this.current = following;
      this.next = 0;
    }
    this.position = ms;
    // The next segment, fetched before it is needed.
    if (this.current + 1 < this.index.segments.length) this.segment(this.current + 1).catch(() => {});
  }

  sizeFollow(data) {
    // A size change in the recording (a new video mode): the player follows it.
    const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
    const count = view.getUint16(2);
    let offset = 4;
    for (let rect = 0; rect < count && offset + 12 <= data.byteLength; rect += 1) {
      const width = view.getUint16(offset + 4);
      const height = view.getUint16(offset + 6);
      const encoding = view.getInt32(offset + 8);
      offset += 12;
      if (encoding === 0) offset += width * height * 4;
      else if (encoding === -223) this.size = [width, height];
    }
  }

  seek(ms) {
    const wanted = Math.max(0, Math.min(this.duration, ms));
    this._seeking = this._seeking.then(async () => {
      this.root.dataset.seeked = "";
      await this.feedTo(wanted);
      this.rebase();
      this.show();
      if (this.playing) this.audioFollow(true);
      this.root.dataset.seeked = String(Math.round(wanted));
    }).catch((error) => this.fail(gettext("This recording cannot be played.") + ` (${error.message})`));
    return this._seeking;
  }

  rebase() {
    this._wallBase = performance.now();
    this._positionBase = this.position;
  }

  play() {
    if (this.position >= this.duration) this.seek(0);
    this.playing = true;
    this.rebase();
    this.state("playing");
    this.audioFollow(true);
    if (!this._timer) this._timer = setInterval(() => this.tick(), TICK_MS);
  }

  pause() {
    this.playing = false;
    clearInterval(this._timer);
    this._timer = null;
    if (this.audio) this.audio.pause();
    this.state("paused");
  }

  audioFollow(force) {
    if (!this.audio || this.muted) return;
    const seconds = this.position / 1000;
    if (force || Math.abs(this.audio.currentTime - seconds) > 0.3) this.audio.currentTime = seconds;
    this.audio.playbackRate = this.speed;
    this.audio.play().catch(() => {});
  }

  tick() {
    if (!this.root.isConnected) {
      // Its page was replaced (Start on the exhibit page puts the machine's page in place).
      this.pause();
      this.channel.close();
      return;
    }
    if (!this.playing || this._busy) return;
    const ms = this._positionBase + (performance.now() - this._wallBase) * this.speed;
    this._busy = true;
    this._seeking = this._seeking.then(() => this.feedTo(Math.min(ms, this.duration))).then(() => {
      this._busy = false;
      this.show();
      if (this.position >= this.duration) {
        if (this.loop) {
          this.seek(0).then(() => { if (this.playing) this.audioFollow(true); });
        } else {
          this.pause();
          this.state("ended");
        }
      }
    }).catch((error) => {
      this._busy = false;
      this.fail(gettext("This recording cannot be played.") + ` (${error.message})`);
    });
  }

  show() {
    const seconds = this.position / 1000;
    this.root.dataset.position = String(Math.round(this.position));
    if (this.slider && document.activeElement !== this.slider) this.slider.value = String(seconds);
    if (this.slider) {
      this.slider.setAttribute("aria-valuetext", format(gettext("%(now)s of %(total)s"),
        { now: clock(seconds), total: clock(this.duration / 1000) }));
    }
    if (this.time) this.time.textContent = `${clock(seconds)} / ${clock(this.duration / 1000)}`;
  }
}

export function playersStart(scope = document) {
  const players = [];
  scope.querySelectorAll("[data-player]").forEach((root) => {
    // A player inside something hidden (the waiting line's tour) starts when shown.
    if (root.portalPlayer || (scope === document && root.closest("[hidden]"))) return;
    const player = new RecordingPlayer(root);
    root.portalPlayer = player;
    players.push(player);
    player.start().catch((error) => player.fail(gettext("This recording cannot be played.") + ` (${error.message})`));
  });
  return players;
}

playersStart();
