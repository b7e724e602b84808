// The on-screen keyboard: the keys DOS needs that a phone or tablet lacks, and
// a way to the device's own keyboard for text.
//
// Owns: the keyboard panel below the screen and the text field that pops the
// system keyboard. Ctrl, Alt and Shift stay held (pressed) until the next key,
// which is sent with them; a second tap lets go. What the system keyboard
// types arrives as input events (phone keyboards send no usable keydown while
// composing), and is sent on as X keysyms through noVNC's sendKey.
//
// Must not: send anything but key events, or decide anything about the session.
import KeyTable from "/static/novnc/core/input/keysym.js";
import keysyms from "/static/novnc/core/input/keysymdef.js";
import { gettext, pgettext } from "./i18n.js";

// [label, keysym, code (the physical key, for QEMU's scancodes), accessible name];
// labels and names as keyboards in the page's language print and call the keys.
const ROWS = [
  [[pgettext("key", "Esc"), KeyTable.XK_Escape, "Escape", pgettext("key", "Escape")],
    [pgettext("key", "Tab"), KeyTable.XK_Tab, "Tab"],
    [pgettext("key", "Ctrl"), KeyTable.XK_Control_L, "ControlLeft", pgettext("key", "Control")],
    ["Alt", KeyTable.XK_Alt_L, "AltLeft"], [pgettext("key", "Shift"), KeyTable.XK_Shift_L, "ShiftLeft"],
    ["⌫", KeyTable.XK_BackSpace, "Backspace", pgettext("key", "Backspace")],
    [pgettext("key", "Del"), KeyTable.XK_Delete, "Delete", pgettext("key", "Delete")],
    [pgettext("key", "Enter"), KeyTable.XK_Return, "Enter"]],
  [[pgettext("key", "Home"), KeyTable.XK_Home, "Home"], [pgettext("key", "End"), KeyTable.XK_End, "End"],
    [pgettext("key", "PgUp"), KeyTable.XK_Page_Up, "PageUp", pgettext("key", "Page Up")],
    [pgettext("key", "PgDn"), KeyTable.XK_Page_Down, "PageDown", pgettext("key", "Page Down")],
    ["←", KeyTable.XK_Left, "ArrowLeft", pgettext("key", "Left")], ["↑", KeyTable.XK_Up, "ArrowUp", pgettext("key", "Up")],
    ["↓", KeyTable.XK_Down, "ArrowDown", pgettext("key", "Down")],
    ["→", KeyTable.XK_Right, "ArrowRight", pgettext("key", "Right")]],
  [1, 2, 3, 4, 5, 6].map((n) => [`F${n}`, KeyTable[`XK_F${n}`], `F${n}`]),
  [7, 8, 9, 10, 11, 12].map((n) => [`F${n}`, KeyTable[`XK_F${n}`], `F${n}`]),
];
const MODIFIERS = new Set(["ControlLeft", "AltLeft", "ShiftLeft"]);
// Keys a hardware keyboard sends while the text field has focus (a tablet's
// keyboard cover) that type nothing: sent on as the keys themselves.
const SPECIAL = Object.fromEntries(ROWS.flat().filter(([, , code]) => !MODIFIERS.has(code))
  .map(([, keysym, code]) => [code, keysym]));
// The text field always holds this, so a Backspace on an empty line still
// arrives as a deletion.
const SENTINEL = "  ";
// Characters that need Shift on the US layout the machines' keyboards have
// (a keysym alone does not press it).
const SHIFTED = /^[A-Z~!@#$%^&*()_+{}|:"<>?]$/;

export class OnScreenKeyboard {
  // panel: the (empty) element to fill; toggle: the toolbar's Keyboard button;
  // display(): the current RFB or null.
  constructor({ panel, toggle, display }) {
    this.panel = panel;
    this.toggle = toggle;
    this.display = display;
    this.held = new Map();  // code -> [keysym, button] of the latched modifiers
    this.render();
    toggle.addEventListener("click", () => this.show(panel.hidden));
  }

  show(open) {
    this.panel.hidden = !open;
    this.toggle.setAttribute("aria-expanded", String(open));
  }

  render() {
    this.panel.setAttribute("role", "group");
    this.panel.setAttribute("aria-label", gettext("On-screen keyboard"));
    // One grid: as many keys a row as fit (four rows on a phone held upright, two across).
    const keys = document.createElement("div");
    keys.className = "osk-keys";
    this.text = document.createElement("input");
    Object.assign(this.text, {
      id: "osk-text", type: "text", autocomplete: "off", spellcheck: false, value: SENTINEL,
    });
    this.text.setAttribute("autocapitalize", "off");
    this.text.setAttribute("autocorrect", "off");
    this.text.setAttribute("enterkeyhint", "enter");
    this.text.setAttribute("aria-label", gettext("Type text for the machine"));
    this.text.className = "osk-text";
    const abc = this.key(gettext("Type text…"), () => this.text.focus(), gettext("Type text with your device's keyboard"));
    abc.classList.add("osk-wide");
    abc.id = "osk-type";
    keys.append(abc);
    for (const [label, keysym, code, name] of ROWS.flat()) {
      const button = this.key(label, () => this.press(keysym, code, button), name || label);
      button.dataset.code = code;
      if (MODIFIERS.has(code)) button.setAttribute("aria-pressed", "false");
      keys.append(button);
    }
    this.panel.append(keys, this.text);
    // A phone keyboard that composes (suggestions, accents) changes the field
    // word by word: what it settles on is typed when the composition ends.
    this.text.addEventListener("input", (event) => { if (!event.isComposing) this.typed(); });
    this.text.addEventListener("compositionend", () => this.typed());
    this.text.addEventListener("keydown", (event) => this.keydown(event));
  }

  key(label, action, name) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "osk-key";
    button.textContent = label;
    if (name !== label) button.setAttribute("aria-label", name);
    // Keeps the focus (and so the system keyboard, while it is open) where it
    // is; should a browser move it to the key all the same, it goes back.
    let typing = false;
    button.addEventListener("pointerdown", (event) => {
      typing = document.activeElement === this.text;
      event.preventDefault();
    });
    button.addEventListener("click", () => {
      action();
      if (typing && document.activeElement !== this.text) this.text.focus({ preventScroll: true });
      typing = false;
    });
    return button;
  }

  press(keysym, code, button) {
    if (MODIFIERS.has(code)) {
      if (this.held.has(code)) this.held.delete(code);
      else this.held.set(code, [keysym, button]);
      button.setAttribute("aria-pressed", String(this.held.has(code)));
      return;
    }
    this.send(keysym, code);
  }

  // One key, with the latched modifiers around it; they let go afterwards.
  send(keysym, code) {
    const rfb = this.display();
    if (!rfb) return;
    const held = [...this.held.entries()];
    for (const [heldCode, [heldKeysym]] of held) rfb.sendKey(heldKeysym, heldCode, true);
    rfb.sendKey(keysym, code, true);
    rfb.sendKey(keysym, code, false);
    for (const [heldCode, [heldKeysym, button]] of held.reverse()) {
      rfb.sendKey(heldKeysym, heldCode, false);
      if (button) button.setAttribute("aria-pressed", "false");
    }
    this.held.clear();
  }

  // What the system keyboard changed in the field: deletions are Backspaces,
  // and every character added is typed as its keysym.
  typed() {
    const now = this.text.value;
    let same = 0;
    while (same < SENTINEL.length && same < now.length && now[same] === SENTINEL[same]) same++;
    for (let i = same; i < SENTINEL.length; i++) this.send(KeyTable.XK_BackSpace, "Backspace");
    for (const character of now.slice(same)) {
      if (character === "\n") this.send(KeyTable.XK_Return, "Enter");
      else {
        // The latched Shift makes a letter a capital: the keysym says the character,
        // and the portal types what it says on the machine's layout.
        const upper = character.toUpperCase();
        const typed = this.held.has("ShiftLeft") && upper.length === 1 ? upper : character;
        if (SHIFTED.test(typed) && !this.held.has("ShiftLeft")) this.held.set("ShiftLeft", [KeyTable.XK_Shift_L, null]);
        this.send(keysyms.lookup(typed.codePointAt(0)), null);
      }
    }
    this.text.value = SENTINEL;
  }

  keydown(event) {
    if (event.isComposing || !(event.code in SPECIAL) || event.key === "Unidentified") return;
    // Backspace is left to the field (a deletion arrives as input) unless the
    // field has nothing of its own to delete.
    if (event.code === "Backspace") return;
    event.preventDefault();
    this.send(SPECIAL[event.code], event.code);
  }
}
