// Touch on the machine's screen.
//
// Owns: how fingers move the guest's mouse. Two ways, one at a time:
// - Direct (the default where the exhibit has QEMU's absolute vmport mouse):
//   noVNC's own gestures on its canvas: a tap is a left click where the finger
//   is, a drag is a left-button drag, a long press is a right-button press,
//   two fingers tap for a right click and drag to scroll.
// - Touchpad (the default where the exhibit has only a relative PS/2 mouse,
//   whose pointer cannot be put where a finger is): the screen works like a
//   laptop's touchpad: a finger's movement moves the pointer by as much, a tap
//   clicks where the pointer is, a long press then a drag holds the button,
//   two fingers tap for a right click. noVNC's gesture recognizer
//   (GestureHandler) reads the fingers on a layer over the screen.
// On a touch device a Touchpad button switches between the two.
//
// Must not: send anything but pointer events, or decide anything about the
// session. It moves the pointer through the same RFB methods noVNC's own
// gesture handling calls (noVNC 1.7 is pinned in package-lock.json).
import GestureHandler from "/static/novnc/core/input/gesturehandler.js";

const LEFT = 0x1;
const MIDDLE = 0x2;
const RIGHT = 0x4;

export function touchDevice() {
  return navigator.maxTouchPoints > 0 || window.matchMedia("(any-pointer: coarse)").matches;
}

export class Touchpad {
  // screen: the element noVNC draws in; display(): the current RFB or null;
  // button: the toolbar's Touchpad switch; mouse: the exhibit's mouse model.
  constructor({ screen, display, button, mouse }) {
    this.display = display;
    this.button = button;
    // Where the guest's pointer is, as far as this page moved it (framebuffer pixels).
    this.pointer = null;
    this.buttons = 0;
    this.last = null;
    this.layer = document.createElement("div");
    this.layer.className = "touchpad";
    this.layer.hidden = true;
    this.layer.setAttribute("aria-hidden", "true");
    screen.after(this.layer);
    this.gestures = new GestureHandler();
    for (const type of ["gesturestart", "gesturemove", "gestureend"]) {
      this.layer.addEventListener(type, (event) => this.onGesture(event));
    }
    if (!touchDevice()) return;
    button.hidden = false;
    button.addEventListener("click", () => this.enable(!this.enabled));
    this.enable(mouse === "ps2");
  }

  get enabled() {
    return !this.layer.hidden;
  }

  enable(on) {
    if (on === this.enabled) return;
    this.layer.hidden = !on;
    this.button.setAttribute("aria-pressed", String(on));
    if (on) this.gestures.attach(this.layer);
    else this.gestures.detach();
  }

  // The canvas's size on the page and in the guest's pixels, or null before the first picture.
  geometry() {
    const rfb = this.display();
    const canvas = rfb && rfb._canvas;
    if (!canvas || !canvas.width) return null;
    const box = canvas.getBoundingClientRect();
    return { rfb, width: canvas.width, height: canvas.height, scale: box.width / canvas.width };
  }

  send(geometry, mask) {
    const { rfb, scale } = geometry;
    // noVNC takes positions in the canvas's own (scaled) pixels; the half pixel
    // keeps its truncation on the intended guest pixel.
    const x = (this.pointer.x + 0.5) * scale;
    const y = (this.pointer.y + 0.5) * scale;
    if (mask === undefined) rfb._handleMouseMove(x, y);
    else rfb._handleMouseButton(x, y, mask);
  }

  click(geometry, mask) {
    this.send(geometry, mask);
    this.send(geometry, 0);
  }

  onGesture(event) {
    const geometry = this.geometry();
    if (!geometry) return;
    const { type, clientX, clientY } = event.detail;
    if (!this.pointer) this.pointer = { x: geometry.width / 2, y: geometry.height / 2 };
    geometry.rfb.focus({ preventScroll: true });
    if (event.type === "gesturestart") {
      this.last = { x: clientX, y: clientY };
      // Where the pointer is, first: QEMU turns a relative mouse's positions into
      // movements from the one before, and has none after a (re)connect.
      this.send(geometry);
      if (type === "onetap") this.click(geometry, LEFT);
      else if (type === "twotap") this.click(geometry, RIGHT);
      else if (type === "threetap") this.click(geometry, MIDDLE);
      else if (type === "longpress") {
        this.buttons = LEFT;
        this.send(geometry, this.buttons);
      }
      return;
    }
    if (type !== "drag" && type !== "longpress") return;
    if (event.type === "gesturemove" && this.last) {
      // The finger's movement on the page, in the guest's pixels: the pointer
      // moves as far as the finger did over the picture.
      this.pointer.x = clamp(this.pointer.x + (clientX - this.last.x) / geometry.scale, 0, geometry.width - 1);
      this.pointer.y = clamp(this.pointer.y + (clientY - this.last.y) / geometry.scale, 0, geometry.height - 1);
      this.last = { x: clientX, y: clientY };
      this.send(geometry);
    } else if (event.type === "gestureend" && this.buttons) {
      this.buttons = 0;
      this.send(geometry, 0);
    }
  }
}

function clamp(value, low, high) {
  return Math.min(high, Math.max(low, value));
}
