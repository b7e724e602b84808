// The staff's page of live visits keeps itself current: every few seconds, while
// its tab is shown, it reads itself again and puts in the new list of visits and
// the new line about the warm pool. The End buttons come with the new list.
(() => {
  "use strict";
  const INTERVAL_MS = 5000;
  const PARTS = ["live-count", "live-visits", "warm-pool"];
  const status = document.getElementById("live-updated");
  let timer = null;

  function say(text) {
    if (status) status.textContent = text;
  }

  function schedule() {
    if (timer === null && !document.hidden) timer = window.setTimeout(refresh, INTERVAL_MS);
  }

  async function refresh() {
    timer = null;
    if (document.hidden) return;
    let response;
    try {
      response = await fetch(window.location.href, {credentials: "same-origin", cache: "no-store"});
    } catch (error) {
      say("Not updated: the portal did not answer; trying again.");
      schedule();
      return;
    }
    if (response.redirected || response.status === 403) {
      // Signed out (or no longer allowed): the sign-in page is not this list.
      say("Not updated: sign in again (reload this page).");
      return;
    }
    if (!response.ok) {
      say(`Not updated: the portal answered ${response.status}; trying again.`);
      schedule();
      return;
    }
    const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
    for (const id of PARTS) {
      const shown = document.getElementById(id);
      const next = fresh.getElementById(id);
      if (shown && next) shown.replaceWith(document.importNode(next, true));
    }
    say(`Updated at ${new Date().toLocaleTimeString()}.`);
    schedule();
  }

  document.addEventListener("visibilitychange", () => {
    if (document.hidden) return;
    window.clearTimeout(timer);
    timer = null;
    refresh();
  });
  schedule();
})();
