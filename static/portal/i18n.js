// The page scripts' words in the visitor's language: Django's catalogue for the
// page's language (/jsi18n/<language>.js, loaded before the page's scripts) sets
// gettext, ngettext and interpolate; without it the scripts speak English.
export const gettext = window.gettext || ((text) => text);
export const ngettext = window.ngettext || ((one, many, count) => (count === 1 ? one : many));

// A sentence with named placeholders filled in: format(gettext("In %(drive)s:"), { drive: "A" }).
export function format(text, values) {
  if (window.interpolate) return window.interpolate(text, values, true);
  return text.replace(/%\((\w+)\)s/g, (_, name) => String(values[name]));
}
export const pgettext = window.pgettext || ((context, text) => text);

// A translated sentence as HTML text, for the notices that put a link inside one.
export function escapeHtml(text) {
  const div = document.createElement("div");
  div.textContent = text;
  return div.innerHTML;
}
