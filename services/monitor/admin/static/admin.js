// The dashboard refreshes itself: every data-refresh-seconds it fetches the server-rendered
// fragment and swaps it in, keeping whatever an operator is typing. Nothing is fetched while the
// tab is hidden; coming back to a stale tab refreshes it at once. No inline script: the page's
// Content-Security-Policy allows only scripts served by the monitor itself.
(() => {
  "use strict";
  const current = () => document.getElementById("dashboard");
  const root = current();
  if (!root) return;
  const period = Math.max(1, Number(root.dataset.refreshSeconds) || 30) * 1000;
  const url = root.dataset.refreshUrl;
  let last = Date.now();
  let busy = false;

  // Drafts (and the cursor) survive the swap: an operator writing a reply loses nothing.
  const drafts = () => {
    const kept = new Map();
    for (const field of current().querySelectorAll("textarea[data-keep]")) {
      kept.set(field.dataset.keep, {
        value: field.value,
        focused: document.activeElement === field,
        start: field.selectionStart,
        end: field.selectionEnd,
      });
    }
    return kept;
  };

  const restore = (kept, fresh) => {
    for (const field of fresh.querySelectorAll("textarea[data-keep]")) {
      const draft = kept.get(field.dataset.keep);
      if (!draft) continue;
      field.value = draft.value;
      if (draft.focused) {
        field.focus();
        field.setSelectionRange(draft.start, draft.end);
      }
    }
  };

  // Counted on the page, so an operator (or a test) can see the pauses.
  const count = (name) => {
    document.body.dataset[name] = String(Number(document.body.dataset[name] || 0) + 1);
  };

  const refresh = async () => {
    if (document.hidden) {
      count("skipped");
      return;
    }
    if (busy) return;
    busy = true;
    try {
      const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } });
      if (response.status === 401) {
        window.location.assign("/admin/login");
        return;
      }
      if (!response.ok) return;
      const doc = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = doc.getElementById("dashboard");
      if (!fresh) return;
      const kept = drafts();
      const adopted = document.adoptNode(fresh);
      current().replaceWith(adopted);
      restore(kept, adopted);
      last = Date.now();
      count("refreshes");
    } catch (error) {
      // The monitor restarting or the network blinking: the next tick tries again.
    } finally {
      busy = false;
    }
  };

  window.setInterval(refresh, period);
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && Date.now() - last >= period) refresh();
  });
})();
