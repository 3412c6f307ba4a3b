"use strict";
// The chat widget for a company's own site:
//   <script src="https://<gateway>/widget.js" defer></script>
// On a site listed in CHAT_EMBED_ORIGINS it adds a button that opens the chat page in an iframe;
// anywhere else it does nothing but say why in the console (and the chat page's frame-ancestors
// policy would refuse to be shown there anyway). The gateway fills in the list when serving this.
(function () {
  const ALLOWED = /*ALLOWED_ORIGINS*/ [];
  const script = document.currentScript;
  if (!script || !script.src) return;
  const chat = new URL("/", script.src).href;
  if (!ALLOWED.includes(window.location.origin)) {
    console.warn("atendimento widget: " + window.location.origin + " is not in CHAT_EMBED_ORIGINS; not shown");
    return;
  }
  const portuguese = !/^en\b/i.test((navigator.languages || [navigator.language])[0] || "");
  const label = portuguese ? ["Falar com o atendimento", "Fechar o atendimento"] : ["Chat with us", "Close the chat"];

  const frame = document.createElement("iframe");
  frame.id = "atendimento-widget-frame";
  frame.title = label[0];
  frame.src = chat;
  frame.hidden = true;
  Object.assign(frame.style, {
    position: "fixed", right: "12px", bottom: "84px", zIndex: "2147483646",
    width: "min(380px, calc(100vw - 24px))", height: "min(600px, calc(100vh - 108px))",
    border: "0", borderRadius: "14px", boxShadow: "0 8px 30px rgba(0,0,0,.25)", background: "#fff",
  });

  const button = document.createElement("button");
  button.id = "atendimento-widget-button";
  button.type = "button";
  button.setAttribute("aria-label", label[0]);
  button.setAttribute("aria-expanded", "false");
  button.textContent = "💬";
  Object.assign(button.style, {
    position: "fixed", right: "16px", bottom: "16px", zIndex: "2147483647", width: "56px", height: "56px",
    borderRadius: "50%", border: "0", background: "#0b7a5c", color: "#fff", fontSize: "26px", cursor: "pointer",
    boxShadow: "0 4px 14px rgba(0,0,0,.25)",
  });
  button.addEventListener("click", () => {
    frame.hidden = !frame.hidden;
    button.setAttribute("aria-expanded", String(!frame.hidden));
    button.setAttribute("aria-label", label[frame.hidden ? 0 : 1]);
  });
  document.body.append(frame, button);
})();
