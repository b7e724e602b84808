// The machine's sound, played in the browser's audio thread: PCM from the
// page (signed 16-bit, interleaved, at the machine's rate) goes into a small
// jitter buffer, and comes out resampled to the audio context's rate.
//
// The buffer starts playing once it holds TARGET_S of sound, plays silence
// (and fills up to TARGET_S again) when it runs dry, and drops the oldest
// sound when more than MAX_S waits, so that sound is never later than that.

const TARGET_S = 0.06;
const MAX_S = 0.25;
const CAPACITY_S = 1.0;
// Samples quieter than this (of 1.0) do not count as sound in the statistics.
const SILENT = 1 / 4096;
const REPORT_EVERY_S = 0.25;

class PortalPcmPlayer extends AudioWorkletProcessor {
  constructor() {
    super();
    this.channels = 1;
    this.rate = sampleRate;
    this.ring = new Float32Array(Math.ceil(CAPACITY_S * sampleRate) * 2);
    this.frames = 0;       // frames held
    this.read = 0;         // where the oldest frame is, in frames
    this.position = 0;     // fraction of a frame between read and read + 1
    this.playing = false;
    this.stats = { received: 0, receivedSound: 0, played: 0, playedSound: 0, underruns: 0, dropped: 0 };
    this.sinceReport = 0;
    this.changed = false;
    this.port.onmessage = (event) => this.take(event.data);
  }

  take(message) {
    if (message.format) {
      this.channels = message.format.channels;
      this.rate = message.format.rate;
      const capacity = Math.ceil(CAPACITY_S * this.rate);
      this.ring = new Float32Array(capacity * this.channels);
      this.frames = 0;
      this.read = 0;
      this.position = 0;
      this.playing = false;
      return;
    }
    if (message.reset) {
      this.frames = 0;
      this.playing = false;
      return;
    }
    const samples = new Int16Array(message.pcm);
    const channels = this.channels;
    const capacity = this.ring.length / channels;
    const count = Math.floor(samples.length / channels);
    let write = (this.read + this.frames) % capacity;
    let loud = 0;
    for (let frame = 0; frame < count; frame++) {
      for (let channel = 0; channel < channels; channel++) {
        const value = samples[frame * channels + channel] / 32768;
        if (value > SILENT || value < -SILENT) loud++;
        this.ring[write * channels + channel] = value;
      }
      write = write + 1 === capacity ? 0 : write + 1;
    }
    this.frames += count;
    if (this.frames > capacity) {
      // Only after a long stall of the audio thread: keep the newest.
      this.stats.dropped += this.frames - capacity;
      this.read = (this.read + this.frames - capacity) % capacity;
      this.frames = capacity;
    }
    this.stats.received += count * channels;
    this.stats.receivedSound += loud;
    this.changed = true;
  }

  process(inputs, outputs) {
    const output = outputs[0];
    const length = output[0].length;
    const channels = this.channels;
    const capacity = this.ring.length / channels;
    const step = this.rate / sampleRate;
    if (!this.playing && this.frames >= TARGET_S * this.rate) this.playing = true;
    if (this.playing && this.frames > MAX_S * this.rate) {
      const skip = this.frames - Math.floor(TARGET_S * this.rate);
      this.read = (this.read + skip) % capacity;
      this.frames -= skip;
      this.stats.dropped += skip;
    }
    let loud = 0;
    for (let index = 0; index < length; index++) {
      if (!this.playing || this.frames < 2) {
        if (this.playing) {
          this.playing = false;
          this.position = 0;
          this.stats.underruns++;
        }
        for (const out of output) out[index] = 0;
        continue;
      }
      const next = this.read + 1 === capacity ? 0 : this.read + 1;
      for (let out = 0; out < output.length; out++) {
        const channel = out < channels ? out : channels - 1;
        const a = this.ring[this.read * channels + channel];
        const b = this.ring[next * channels + channel];
        const value = a + (b - a) * this.position;
        output[out][index] = value;
        if (out === 0 && (value > SILENT || value < -SILENT)) loud++;
      }
      this.position += step;
      while (this.position >= 1 && this.frames > 1) {
        this.position -= 1;
        this.read = this.read + 1 === capacity ? 0 : this.read + 1;
        this.frames--;
      }
    }
    if (this.playing || loud) {
      this.stats.played += length;
      this.stats.playedSound += loud;
      this.changed = true;
    }
    this.sinceReport += length / sampleRate;
    if (this.changed && this.sinceReport >= REPORT_EVERY_S) {
      this.port.postMessage(this.stats);
      this.sinceReport = 0;
      this.changed = false;
    }
    return true;
  }
}

registerProcessor("portal-pcm-player", PortalPcmPlayer);
