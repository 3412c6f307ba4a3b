"use strict";
// The chat page: posts to /v1/messages and shows replies from the conversation's SSE stream.
(function () {
  const storageKey = "atendimento.user";
  const userId = localStorage.getItem(storageKey) || "web-" + crypto.randomUUID();
  localStorage.setItem(storageKey, userId);
  const conversationId = "web:" + userId;

  const list = document.getElementById("messages");
  const typing = document.getElementById("typing");
  const status = document.getElementById("status");
  const form = document.getElementById("composer");
  const input = document.getElementById("text");
  const pending = new Set();
  const shown = new Set();

  function add(text, kind) {
    const item = document.createElement("li");
    item.className = "msg msg--" + kind;
    item.textContent = text;
    list.appendChild(item);
    list.scrollTop = list.scrollHeight;
  }

  function setTyping() { typing.hidden = pending.size === 0; }

  function showReply(data) {
    pending.delete(data.message_id);
    setTyping();
    if (shown.has(data.message_id)) return;
    shown.add(data.message_id);
    add(data.reply.text, "bot");
  }

  function connect() {
    const events = new EventSource("/v1/conversations/" + encodeURIComponent(conversationId) + "/events");
    events.onopen = () => { status.textContent = "online"; };
    events.addEventListener("reply", (event) => showReply(JSON.parse(event.data)));
    // EventSource reconnects by itself after a drop; say so meanwhile.
    events.onerror = () => { status.textContent = "reconectando…"; };
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    input.value = "";
    add(text, "me");
    const messageId = crypto.randomUUID();
    pending.add(messageId);
    setTyping();
    try {
      const response = await fetch("/v1/messages", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ user_id: userId, conversation_id: conversationId, message_id: messageId, text }),
      });
      if (response.status >= 400) {
        const problem = await response.json().catch(() => ({ detail: response.statusText }));
        pending.delete(messageId);
        setTyping();
        add("Não foi possível enviar: " + (problem.detail || response.status), "error");
      }
    } catch (error) {
      pending.delete(messageId);
      setTyping();
      add("Sem conexão. Tente novamente.", "error");
    }
  });

  connect();
})();
