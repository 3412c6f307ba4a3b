// The inbox, live: the monitor's event stream (/admin/events) says when the queue of conversations
// waiting for a person changed; the badge in the bar shows how many wait, the inbox page swaps in
// the fresh queue, and a new arrival may raise a browser notification (when the operator allowed
// it). EventSource reconnects by itself; a lost session (401) sends the operator to sign in.
(() => {
  "use strict";
  const badge = document.getElementById("inbox-badge");
  const page = document.getElementById("inbox-page");
  const notify = document.getElementById("notify");
  // The count of the last event: a larger one is a new arrival (an agent's reply renews a handoff
  // and moves newest_at, without one).
  let waiting = null;
  let busy = false;

  const showCount = (count) => {
    if (!badge) return;
    badge.hidden = count === 0;
    badge.textContent = String(count);
    document.body.dataset.waiting = String(count);
  };

  const swap = async () => {
    if (!page || busy) return;
    busy = true;
    try {
      const response = await fetch(page.dataset.fragment, { credentials: "same-origin", headers: { Accept: "text/html" } });
      if (response.status === 401) {
        window.location.assign("/admin/login");
        return;
      }
      if (!response.ok) return;
      const doc = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = doc.getElementById("inbox");
      const current = document.getElementById("inbox");
      if (fresh && current) current.replaceWith(document.adoptNode(fresh));
    } catch (error) {
      // the monitor restarting: the next event brings the queue again
    } finally {
      busy = false;
    }
  };

  const announce = () => {
    if (!("Notification" in window) || Notification.permission !== "granted" || !page) return;
    new Notification(page.dataset.notifyTitle, { tag: "atendimento-handoff" });
  };

  const stream = new EventSource("/admin/events");
  stream.addEventListener("handoffs", (event) => {
    const data = JSON.parse(event.data);
    showCount(data.count);
    if (waiting !== null && data.count > waiting) announce();
    waiting = data.count;
    swap();
  });
  stream.addEventListener("error", async () => {
    // Closed for good, or a refusal: ask once whether the session is still there.
    if (stream.readyState !== EventSource.CLOSED) return;
    const response = await fetch("/admin/inbox/fragment", { credentials: "same-origin" }).catch(() => null);
    if (response && response.status === 401) window.location.assign("/admin/login");
  });

  // A conversation opens at its newest message, right above the reply box.
  const composer = document.getElementById("composer");
  if (composer) composer.scrollIntoView({ block: "end" });

  if (notify && "Notification" in window) {
    const mark = () => {
      notify.hidden = Notification.permission === "denied";
      notify.disabled = Notification.permission === "granted";
      if (notify.disabled) notify.textContent = notify.dataset.on;
    };
    mark();
    notify.addEventListener("click", () => Notification.requestPermission().then(mark));
  }
})();
