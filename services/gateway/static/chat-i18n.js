"use strict";
// The chat page's texts in Brazilian Portuguese, English and Spanish, chosen from the browser's
// languages (the first Portuguese, English or Spanish one; anything else gets pt-BR). Runs before chat.js, which
// reads them through window.chatText; the page's own elements name their text in data-i18n*.
(function () {
  const TEXTS = {
    "pt-BR": {
      title: "Atendimento",
      conversation: "Conversa",
      connecting: "conectando…",
      online: "online",
      reconnecting: "reconectando…",
      key_status: "chave de acesso necessária",
      greeting: "Olá! Sou o assistente virtual. Como posso ajudar?",
      typing: "digitando…",
      key_label: "Este atendimento pede uma chave de acesso",
      key_enter: "Entrar",
      message: "Mensagem",
      placeholder: "Digite sua pergunta",
      send: "Enviar",
      handoff: "Um atendente humano vai continuar esta conversa.",
      agent: "Atendente",
      options: "Opções",
      offline: "Sem conexão. Tente novamente em instantes.",
      too_many: "Muitas mensagens seguidas. Aguarde {wait} segundos e tente de novo.",
      some: "alguns",
      not_sent: "Não foi possível enviar: {detail}",
    },
    en: {
      title: "Support",
      conversation: "Conversation",
      connecting: "connecting…",
      online: "online",
      reconnecting: "reconnecting…",
      key_status: "access key needed",
      greeting: "Hello! I am the virtual assistant. How can I help?",
      typing: "typing…",
      key_label: "This service asks for an access key",
      key_enter: "Enter",
      message: "Message",
      placeholder: "Type your question",
      send: "Send",
      handoff: "A human agent will continue this conversation.",
      agent: "Agent",
      options: "Options",
      offline: "No connection. Try again in a moment.",
      too_many: "Too many messages in a row. Wait {wait} seconds and try again.",
      some: "a few",
      not_sent: "Could not send: {detail}",
    },
    es: {
      title: "Atención",
      conversation: "Conversación",
      connecting: "conectando…",
      online: "en línea",
      reconnecting: "reconectando…",
      key_status: "se necesita una clave de acceso",
      greeting: "¡Hola! Soy el asistente virtual. ¿En qué puedo ayudar?",
      typing: "escribiendo…",
      key_label: "Este servicio pide una clave de acceso",
      key_enter: "Entrar",
      message: "Mensaje",
      placeholder: "Escribe tu pregunta",
      send: "Enviar",
      handoff: "Un agente humano continuará esta conversación.",
      agent: "Agente",
      options: "Opciones",
      offline: "Sin conexión. Inténtalo de nuevo en un momento.",
      too_many: "Demasiados mensajes seguidos. Espera {wait} segundos y vuelve a intentarlo.",
      some: "unos",
      not_sent: "No se pudo enviar: {detail}",
    },
  };

  function pick(tags) {
    for (const tag of tags) {
      const primary = String(tag).toLowerCase().split("-")[0];
      if (primary === "pt") return "pt-BR";
      if (primary === "en") return "en";
      if (primary === "es") return "es";
    }
    return "pt-BR";
  }

  const language = pick(navigator.languages && navigator.languages.length ? navigator.languages : [navigator.language]);
  const texts = TEXTS[language];
  window.chatText = (key, values) =>
    (texts[key] || TEXTS["pt-BR"][key] || key).replace(/\{(\w+)\}/g, (_, name) => String((values || {})[name]));

  document.documentElement.lang = language;
  document.title = texts.title;
  for (const element of document.querySelectorAll("[data-i18n]")) element.textContent = texts[element.dataset.i18n];
  for (const element of document.querySelectorAll("[data-i18n-placeholder]")) {
    element.placeholder = texts[element.dataset.i18nPlaceholder];
  }
  for (const element of document.querySelectorAll("[data-i18n-label]")) {
    element.setAttribute("aria-label", texts[element.dataset.i18nLabel]);
  }

  // The operator's look (CHAT_TITLE, CHAT_COLOR, CHAT_GREETING, CHAT_AVATAR_URL), written into
  // <body data-*> by the gateway: it replaces the defaults above, in every language.
  const look = document.body.dataset;
  if (look.color) {
    document.documentElement.style.setProperty("--accent", look.color);
    document.querySelector('meta[name="theme-color"]').setAttribute("content", look.color);
  }
  if (look.title) {
    document.title = look.title;
    document.getElementById("title").textContent = look.title;
    document.querySelector(".chat__avatar").textContent = look.title.trim().charAt(0).toUpperCase();
  }
  if (look.greeting) document.querySelector('[data-i18n="greeting"]').textContent = look.greeting;
  if (look.avatar) {
    const image = document.createElement("img");
    image.src = look.avatar;
    image.alt = "";
    const avatar = document.querySelector(".chat__avatar");
    avatar.textContent = "";
    avatar.appendChild(image);
  }
})();
