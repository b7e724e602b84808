// One page of the portal becomes another in place: the exhibit page becomes the
// machine's page after Start, without a navigation. The new page's HTML (as the
// server renders it for its address) replaces the body and the head's title and
// viewport; its scripts run as they would have on a load (modules by import, so
// those the page preloaded start at once; scripts the page has already are not
// run twice). The address becomes the new page's, in the history: a reload or a
// shared link gives the same page, and Back returns to the one before.
let shown = window.location.pathname + window.location.search;

function scriptRun(old) {
  return new Promise((resolve) => {
    const script = document.createElement("script");
    for (const { name, value } of old.attributes) script.setAttribute(name, value);
    if (old.src) {
      script.addEventListener("load", resolve);
      script.addEventListener("error", resolve);
    } else {
      script.textContent = old.textContent;
    }
    old.replaceWith(script);
    if (!old.src) resolve();
  });
}

// `keep`: an element of this page that takes the place of the new page's element
// of the same id (its attributes the new one's), as it is: the early display
// client's screen, already drawing. `first`: what the new page's scripts wait for,
// once its body is in place (the machine's first picture, so that it is drawn
// before the scripts' own set-up keeps the page busy).
export async function pageBecome(html, url, { keep = null, first = null } = {}) {
  const next = new DOMParser().parseFromString(html, "text/html");
  for (const { name, value } of next.documentElement.attributes) document.documentElement.setAttribute(name, value);
  document.title = next.title;
  const viewport = next.querySelector('meta[name="viewport"]');
  const ours = document.querySelector('meta[name="viewport"]');
  if (viewport && ours) ours.content = viewport.content;
  // What the new head has and this one lacks (a style sheet, a script), in its order.
  const heads = [];
  for (const element of next.head.querySelectorAll("link[rel=stylesheet], script[src]")) {
    const address = element.href || element.src;
    const present = [...document.head.querySelectorAll("link[rel=stylesheet], script[src]")]
      .some((mine) => (mine.href || mine.src) === address);
    if (!present) heads.push(element);
  }
  for (const element of heads) {
    document.head.appendChild(document.adoptNode(element));
    if (element.tagName === "SCRIPT") await scriptRun(element);
  }
  const loaded = new Set([...document.scripts].map((script) => script.src).filter(Boolean));
  const body = document.adoptNode(next.body);
  const slot = keep && keep.id ? body.querySelector(`#${CSS.escape(keep.id)}`) : null;
  if (slot) {
    for (const { name } of [...keep.attributes]) if (name !== "id") keep.removeAttribute(name);
    for (const { name, value } of slot.attributes) keep.setAttribute(name, value);
    slot.replaceWith(keep);
  }
  const scripts = [...body.querySelectorAll("script")].filter((script) => {
    const type = (script.type || "text/javascript").toLowerCase();
    return type === "module" || type === "text/javascript";
  });
  document.body.replaceWith(body);
  window.history.pushState({ page: url }, "", url);
  shown = window.location.pathname + window.location.search;
  window.scrollTo(0, 0);
  // A press on the new page before its scripts run (they wait for `first`) is held,
  // and given to its control once they have.
  const held = [];
  const hold = (event) => {
    const control = event.target instanceof Element
      ? event.target.closest("button, a[href], summary, [role=button]") : null;
    if (!control) return;
    event.preventDefault();
    event.stopImmediatePropagation();
    held.push(control);
  };
  if (first) {
    body.addEventListener("click", hold, true);
    await first;
  }
  for (const script of scripts) {
    if (script.type === "module") {
      if (script.src) await import(script.src);
      else await scriptRun(script);
    } else if (!script.src || !loaded.has(script.src)) {
      await scriptRun(script);
    }
  }
  body.removeEventListener("click", hold, true);
  window.dispatchEvent(new Event("portal:page-scripts-ran"));
  for (const control of held) if (control.isConnected) control.click();
}

// A page changed in place has the address of its own: going back or forward to
// another address of the same document (also after a reload, which keeps the
// entries before it) loads that one, as after a navigation.
window.addEventListener("popstate", () => {
  const here = window.location.pathname + window.location.search;
  if (here !== shown) window.location.reload();
});
