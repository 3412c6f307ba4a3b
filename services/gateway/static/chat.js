"use strict";
// The chat page: posts to /v1/messages and shows the conversation's replies from its event stream
// (GET /v1/conversations/{id}/events). The stream is read with fetch rather than EventSource so
// that it can carry an API key, and it reconnects by itself after a drop; replies that arrived
// meanwhile are fetched from /v1/messages/{id}. No build step, no framework.
(function () {
  const STALL_MS = 45000; // the server sends a keep-alive every 15 s; silence this long is a dead link
  const PENDING_MS = 120000; // stop showing "typing" for a message nobody answers (e.g. a human took over)
  const T = window.chatText; // the texts in the browser's language (chat-i18n.js)

  const els = {
    list: document.getElementById("messages"),
    typing: document.getElementById("typing"),
    status: document.getElementById("status"),
    composer: document.getElementById("composer"),
    text: document.getElementById("text"),
    send: document.getElementById("send"),
    keyForm: document.getElementById("key-form"),
    key: document.getElementById("key"),
  };

  const userId = remembered(localStorage, "atendimento.user", () => "web-" + newId());
  const conversationId = "web:" + userId;
  let apiKey = sessionStorage.getItem("atendimento.key") || "";
  let keyWaiters = [];
  // The conversation's token (from every answer to a post) opens its stream and its messages;
  // kept with the user id, so a reload goes on with the same conversation.
  let conversationToken = localStorage.getItem("atendimento.token") || "";
  let tokenWaiters = [];
  let humanTookOver = false;
  const pending = new Map(); // message_id -> timer: sent, no reply shown yet
  const shown = new Set();
  const drafts = new Map(); // message_id -> the bubble of a reply still being generated (SSE delta)

  function remembered(storage, name, make) {
    let value = storage.getItem(name);
    if (!value) {
      value = make();
      storage.setItem(name, value);
    }
    return value;
  }

  function newId() {
    // crypto.randomUUID needs a secure context; getRandomValues works everywhere.
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // --- rendering ---------------------------------------------------------------------------
  function add(text, kind) {
    const item = document.createElement("li");
    item.className = "msg msg--" + kind;
    if (kind === "agent") item.dataset.who = T("agent"); // a person, not the bot, wrote it
    item.textContent = text;
    els.list.appendChild(item);
    item.scrollIntoView({ block: "end", behavior: "smooth" });
    return item;
  }

  // A reply's options (entries of a question back, the hand-over, an entry's own buttons): a tap
  // sends the label as the text and the option's id as `option`. Only the latest reply's stay.
  function showChips(options) {
    const row = document.createElement("li");
    row.className = "chips";
    row.setAttribute("role", "group");
    row.setAttribute("aria-label", T("options"));
    for (const option of options) {
      const chip = document.createElement("button");
      chip.type = "button";
      chip.className = "chip";
      chip.textContent = option.label;
      chip.addEventListener("click", () => send(option.label, option.id));
      row.appendChild(chip);
    }
    els.list.appendChild(row);
    row.scrollIntoView({ block: "end", behavior: "smooth" });
  }

  function clearChips() {
    els.list.querySelectorAll(".chips").forEach((row) => row.remove());
  }

  // An LLM reply as it is generated: one bubble, its text growing; the reply event completes it.
  function showDelta(data) {
    if (shown.has(data.message_id)) return;
    let bubble = drafts.get(data.message_id);
    if (!bubble) {
      bubble = add("", "bot");
      bubble.classList.add("msg--draft");
      drafts.set(data.message_id, bubble);
    }
    bubble.textContent = data.text;
  }

  function setStatus(state, text) {
    els.status.dataset.state = state;
    els.status.textContent = text;
  }

  function updateTyping() {
    els.typing.hidden = pending.size === 0 || humanTookOver;
    if (!els.typing.hidden) els.typing.scrollIntoView({ block: "end" });
  }

  function settle(messageId) {
    clearTimeout(pending.get(messageId));
    pending.delete(messageId);
    updateTyping();
  }

  function showReply(data) {
    settle(data.message_id);
    if (shown.has(data.message_id)) return; // the same reply from the stream and from a fetch
    shown.add(data.message_id);
    const draft = drafts.get(data.message_id);
    drafts.delete(data.message_id);
    if (draft) {
      draft.textContent = data.reply.text;
      draft.classList.remove("msg--draft");
    } else {
      add(data.reply.text, data.reply.engine === "agent" ? "agent" : "bot");
    }
    // Only the latest reply's options may be chosen: an earlier reply's chips go, with or without new ones.
    clearChips();
    if (data.reply.options && data.reply.options.length) showChips(data.reply.options);
    // In the widget's frame: the site's page counts it as unread while the chat is closed.
    if (window.parent !== window) window.parent.postMessage({ type: "atendimento:reply" }, "*");
    if (data.reply.handoff && !humanTookOver) {
      humanTookOver = true;
      add(T("handoff"), "note");
    }
  }

  // --- API key (only when the gateway asks for one) ------------------------------------------
  function headers(extra) {
    return Object.assign(apiKey ? { Authorization: "Bearer " + apiKey } : {}, extra || {});
  }

  function keyNeeded() {
    els.keyForm.hidden = false;
    els.key.focus();
    return new Promise((resolve) => keyWaiters.push(resolve));
  }

  function tokenHeader(extra) {
    return Object.assign(conversationToken ? { "X-Conversation-Token": conversationToken } : {}, extra || {});
  }

  function tokenKnown() {
    return conversationToken ? Promise.resolve() : new Promise((resolve) => tokenWaiters.push(resolve));
  }

  function rememberToken(token) {
    if (!token || token === conversationToken) return;
    conversationToken = token;
    localStorage.setItem("atendimento.token", token);
    tokenWaiters.forEach((resolve) => resolve());
    tokenWaiters = [];
  }

  els.keyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    apiKey = els.key.value.trim();
    sessionStorage.setItem("atendimento.key", apiKey);
    els.keyForm.hidden = true;
    keyWaiters.forEach((resolve) => resolve());
    keyWaiters = [];
  });

  // --- the event stream --------------------------------------------------------------------
  async function listen() {
    const url = "/v1/conversations/" + encodeURIComponent(conversationId) + "/events";
    let delay = 500;
    for (;;) {
      // A new conversation has no token until its first message is answered: asking before
      // that would only be refused (403), so the stream opens once there is one.
      if (!conversationToken) {
        setStatus("online", T("online"));
        await tokenKnown();
      }
      const stop = new AbortController();
      let watchdog = setTimeout(() => stop.abort(), STALL_MS);
      const alive = () => {
        clearTimeout(watchdog);
        watchdog = setTimeout(() => stop.abort(), STALL_MS);
      };
      try {
        const response = await fetch(url, {
          headers: headers(tokenHeader({ Accept: "text/event-stream" })),
          cache: "no-store",
          signal: stop.signal,
        });
        if (response.status === 401) {
          clearTimeout(watchdog);
          setStatus("offline", T("key_status"));
          await keyNeeded();
          continue;
        }
        if (response.status === 403) {
          // No token yet (a new conversation), or no longer a valid one: the gateway is there,
          // and the answer to the next message brings the token.
          clearTimeout(watchdog);
          conversationToken = "";
          localStorage.removeItem("atendimento.token");
          setStatus("online", T("online"));
          await tokenKnown();
          continue;
        }
        if (!response.ok || !response.body) throw new Error("HTTP " + response.status);
        setStatus("online", T("online"));
        delay = 500;
        recoverReplies();
        await readEvents(response.body, alive);
      } catch (error) {
        // a refused connection, a drop or a stall: try again below
      } finally {
        clearTimeout(watchdog);
      }
      setStatus("connecting", T("reconnecting"));
      await sleep(delay);
      delay = Math.min(delay * 2, 8000);
    }
  }

  async function readEvents(body, alive) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return; // the server closed the stream (it is restarting): reconnect
      alive();
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        dispatch(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
      }
    }
  }

  function dispatch(block) {
    let event = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith(":")) continue; // a comment: connected, keep-alive
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "event") event = value;
      else if (field === "data") data.push(value);
    }
    if (event === "reply" && data.length) showReply(JSON.parse(data.join("\n")));
    else if (event === "delta" && data.length) showDelta(JSON.parse(data.join("\n")));
  }

  // After a reconnect: replies that came while the stream was down are stored; ask for them.
  async function recoverReplies() {
    for (const messageId of Array.from(pending.keys())) {
      try {
        const response = await fetch("/v1/messages/" + encodeURIComponent(messageId), {
          headers: headers(tokenHeader()),
        });
        if (response.ok) {
          const data = await response.json();
          if (data.status === "answered") showReply(data);
        }
      } catch (error) {
        return; // down again: the next reconnect tries again
      }
    }
  }

  // --- sending -----------------------------------------------------------------------------
  // `option`: the id of a chip tapped (the gateway then knows which offered choice it was).
  async function send(text, option) {
    const messageId = newId();
    clearChips();
    add(text, "me");
    pending.set(messageId, setTimeout(() => settle(messageId), PENDING_MS));
    updateTyping();
    const message = { user_id: userId, conversation_id: conversationId, message_id: messageId, text };
    if (option) message.option = option;
    // The page's language: the bot's own texts (fallback, hand-over, options) follow it.
    message.metadata = { language: document.documentElement.lang };
    const body = JSON.stringify(message);
    // The message id makes a retry safe: the gateway accepts it once, whatever happens to the answer.
    for (let attempt = 1; ; attempt++) {
      let response;
      try {
        response = await fetch("/v1/messages", {
          method: "POST",
          headers: headers({ "Content-Type": "application/json" }),
          body,
        });
      } catch (error) {
        if (attempt >= 4) return fail(messageId, T("offline"));
        await sleep(1000 * attempt);
        continue;
      }
      if (response.ok) {
        rememberToken((await response.json().catch(() => ({}))).conversation_token);
        return;
      }
      if (response.status === 401) {
        await keyNeeded();
        continue;
      }
      const problem = await response.json().catch(() => ({}));
      if (response.status === 429) {
        const wait = response.headers.get("Retry-After") || T("some");
        return fail(messageId, T("too_many", { wait }));
      }
      if (response.status === 503 && attempt < 4) {
        await sleep(1000 * attempt);
        continue;
      }
      return fail(messageId, T("not_sent", { detail: problem.detail || response.statusText }));
    }
  }

  function fail(messageId, text) {
    settle(messageId);
    add(text, "error");
  }

  function fitText() {
    els.text.style.height = "auto";
    els.text.style.height = els.text.scrollHeight + "px";
  }

  els.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = els.text.value.trim();
    if (!text) return;
    els.text.value = "";
    fitText();
    send(text);
  });

  els.text.addEventListener("input", fitText);
  els.text.addEventListener("keydown", (event) => {
    // Enter sends, Shift+Enter starts a new line (as in every chat app).
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      els.composer.requestSubmit();
    }
  });

  listen();
})();
