// The machine's screen and the keyboard: a way in, and a way out.
//
// Owns: the screen's accessible name and description, the "Type into the
// machine" button that gives it the keyboard, and the release chord. While
// the screen has the focus, noVNC sends every key to the guest (Tab and Esc
// too: DOS and Windows programs need them), so the page itself watches for
// Ctrl+Alt+Shift pressed together, a chord no DOS or Windows 3.1 program
// needs, and then moves the focus back to the page. The chord's last key
// never reaches the guest, and the keys already down (Ctrl, Alt) are let go
// through noVNC's own key-up handling before the focus moves (noVNC lets go
// of held keys only when the whole window loses the focus), so nothing stays
// held in the guest.
//
// Must not: send keys itself, or decide anything about the session.
import { gettext } from "./i18n.js";

const MODIFIER_KEYS = new Set(["Control", "Alt", "Shift"]);

// Whether a keydown completes the release chord.
export function releaseChord(event) {
  return MODIFIER_KEYS.has(event.key) && event.ctrlKey && event.altKey && event.shiftKey;
}

export class ScreenFocus {
  // screen: the element noVNC draws in; enter: the button that gives the machine
  // the keyboard (and takes the focus back); display(): the current RFB or null;
  // also: further elements that send keys to the guest (the on-screen keyboard).
  constructor({ screen, enter, display, also = [] }) {
    this.screen = screen;
    this.enter = enter;
    this.display = display;
    // The keys held down on the screen, by code (what noVNC files them under).
    this.down = new Map();
    enter.addEventListener("click", () => this.focus());
    // Capture: the page sees the chord before noVNC (on its canvas, inside) does.
    for (const element of [screen, ...also]) {
      element.addEventListener("keydown", (event) => {
        if (!releaseChord(event)) {
          if (element === screen) this.down.set(event.code, event.key);
          return;
        }
        event.preventDefault();
        event.stopImmediatePropagation();
        this.release(element === screen ? event.target : null);
      }, true);
    }
    screen.addEventListener("keyup", (event) => this.down.delete(event.code), true);
    screen.addEventListener("focusin", () => document.body.classList.add("screen-has-keys"));
    screen.addEventListener("focusout", () => document.body.classList.remove("screen-has-keys"));
  }

  // The canvas noVNC made: named, described, and a place keys are passed through.
  label(rfb) {
    const canvas = this.screen.querySelector("canvas");
    if (!canvas) return;
    canvas.setAttribute("role", "application");
    canvas.setAttribute("aria-roledescription", gettext("machine screen"));
    canvas.setAttribute("aria-label", gettext("The machine's screen"));
    canvas.setAttribute("aria-describedby", "screen-keys");
    this.enter.disabled = !rfb;
  }

  focus() {
    const rfb = this.display();
    if (rfb) rfb.focus();
  }

  // Back to the page, where the keyboard's way in is; first the held keys go up
  // in the guest (noVNC sends a key-up only for a key it saw go down).
  release(target) {
    const held = [...this.down.entries()];
    this.down.clear();
    if (target) {
      for (const [code, key] of held) {
        target.dispatchEvent(new KeyboardEvent("keyup", { code, key, bubbles: true, cancelable: true }));
      }
    }
    this.enter.focus();
  }

  // Whether the page's own focus is nowhere in particular (so giving the machine
  // the keyboard takes nothing from the visitor).
  idle() {
    const active = document.activeElement;
    return !active || active === document.body || this.screen.contains(active);
  }
}
