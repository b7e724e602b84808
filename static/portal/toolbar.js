// The machine page's toolbar on a narrow screen: Keyboard and End stay in
// view, the rest folds into the More menu.
//
// Owns: the More button, a disclosure (aria-expanded, aria-controls) over the
// menu's ordinary buttons and links, so touch, keyboard and screen readers use
// it like any button. The menu closes on Escape (the focus back on More), on a
// press outside it, and once one of its actions was chosen. On a wide screen
// CSS shows the menu's content in the row and hides the More button.
//
// Must not: act on the machine; each action belongs to its own module.

export function toolbarStart({ toggle, menu }) {
  if (!toggle || !menu) return;
  const open = () => toggle.getAttribute("aria-expanded") === "true";
  const show = (opened, { focusToggle = false } = {}) => {
    toggle.setAttribute("aria-expanded", String(opened));
    menu.classList.toggle("open", opened);
    if (!opened && focusToggle) toggle.focus();
  };
  // The focus stays on More: the menu follows it, so the next Tab is its first action.
  toggle.addEventListener("click", () => show(!open()));
  menu.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && open()) {
      event.preventDefault();
      show(false, { focusToggle: true });
    }
  });
  // An action chosen (a select's choice is a change, not a click): the menu goes.
  menu.addEventListener("click", (event) => {
    if (open() && event.target.closest("button, a[href]")) show(false);
  });
  menu.addEventListener("change", () => { if (open()) show(false); });
  document.addEventListener("pointerdown", (event) => {
    if (open() && !menu.contains(event.target) && !toggle.contains(event.target)) show(false);
  });
  // Tab past the menu's last action (or back before More): it closes behind the focus.
  menu.addEventListener("focusout", (event) => {
    if (open() && event.relatedTarget && !menu.contains(event.relatedTarget) && event.relatedTarget !== toggle) {
      show(false);
    }
  });
}
