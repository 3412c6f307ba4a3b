"use strict";
// The chat widget for a company's own site:
//   <script src="https://<gateway>/widget.js" defer></script>
// On a site listed in CHAT_EMBED_ORIGINS it adds a launcher (an SVG chat bubble, in CHAT_COLOR)
// that opens the chat page in an iframe, a close button on the open chat, and a badge counting the
// replies that arrived while it was closed (the chat page tells its parent of each reply). Anywhere
// else it does nothing but say why in the console (and the chat page's frame-ancestors policy
// would refuse to be shown there anyway). The gateway fills in the list and colour when serving.
(function () {
  const ALLOWED = /*ALLOWED_ORIGINS*/ [];
  const COLOR = /*CHAT_COLOR*/ "#0b7a5c";
  const script = document.currentScript;
  if (!script || !script.src) return;
  const chat = new URL("/", script.src);
  if (!ALLOWED.includes(window.location.origin)) {
    console.warn("atendimento widget: " + window.location.origin + " is not in CHAT_EMBED_ORIGINS; not shown");
    return;
  }
  const tag = ((navigator.languages || [navigator.language])[0] || "").toLowerCase();
  const label = tag.startsWith("en")
    ? ["Chat with us", "Close the chat", "unread"]
    : tag.startsWith("es")
      ? ["Habla con nosotros", "Cerrar el chat", "sin leer"]
      : ["Falar com o atendimento", "Fechar o atendimento", "não lidas"];
  const SVG = "http://www.w3.org/2000/svg";
  const BUBBLE = "M4 4h16a2 2 0 0 1 2 2v10a2 2 0 0 1-2 2H9l-5 4v-4a2 2 0 0 1-2-2V6a2 2 0 0 1 2-2z";
  const CROSS = "M6 6l12 12M18 6L6 18";

  function icon(path, filled) {
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("width", "26");
    svg.setAttribute("height", "26");
    svg.setAttribute("aria-hidden", "true");
    const line = document.createElementNS(SVG, "path");
    line.setAttribute("d", path);
    line.setAttribute("fill", filled ? "currentColor" : "none");
    line.setAttribute("stroke", "currentColor");
    line.setAttribute("stroke-width", filled ? "0" : "2.4");
    line.setAttribute("stroke-linecap", "round");
    svg.appendChild(line);
    return svg;
  }

  const frame = document.createElement("iframe");
  frame.id = "atendimento-widget-frame";
  frame.title = label[0];
  frame.src = chat.href;
  frame.hidden = true;
  Object.assign(frame.style, {
    position: "fixed", right: "12px", bottom: "84px", zIndex: "2147483646",
    width: "min(380px, calc(100vw - 24px))", height: "min(600px, calc(100vh - 108px))",
    border: "0", borderRadius: "14px", boxShadow: "0 8px 30px rgba(0,0,0,.25)", background: "#fff",
  });

  const close = document.createElement("button");
  close.id = "atendimento-widget-close";
  close.type = "button";
  close.hidden = true;
  close.setAttribute("aria-label", label[1]);
  close.appendChild(icon(CROSS, false));
  Object.assign(close.style, {
    position: "fixed", right: "20px", bottom: "calc(min(600px, 100vh - 108px) + 92px)", zIndex: "2147483647",
    width: "32px", height: "32px", borderRadius: "50%", border: "0", padding: "3px", cursor: "pointer",
    background: "rgba(0,0,0,.55)", color: "#fff", lineHeight: "0",
  });
  close.firstChild.setAttribute("width", "26");

  const button = document.createElement("button");
  button.id = "atendimento-widget-button";
  button.type = "button";
  button.setAttribute("aria-label", label[0]);
  button.setAttribute("aria-expanded", "false");
  button.appendChild(icon(BUBBLE, true));
  Object.assign(button.style, {
    position: "fixed", right: "16px", bottom: "16px", zIndex: "2147483647", width: "56px", height: "56px",
    borderRadius: "50%", border: "0", background: COLOR, color: "#fff", cursor: "pointer", lineHeight: "0",
    boxShadow: "0 4px 14px rgba(0,0,0,.25)", display: "grid", placeItems: "center",
  });

  const badge = document.createElement("span");
  badge.id = "atendimento-widget-badge";
  badge.hidden = true;
  Object.assign(badge.style, {
    position: "absolute", top: "-4px", right: "-4px", minWidth: "20px", height: "20px", padding: "0 5px",
    borderRadius: "10px", background: "#d93025", color: "#fff", font: "600 12px/20px system-ui, sans-serif",
    textAlign: "center",
  });
  button.appendChild(badge);
  let unread = 0;

  function showUnread() {
    badge.hidden = unread === 0;
    badge.textContent = String(unread);
    button.setAttribute("aria-label", unread ? label[0] + " (" + unread + " " + label[2] + ")" : label[0]);
  }

  function toggle(open) {
    frame.hidden = !open;
    close.hidden = !open;
    button.setAttribute("aria-expanded", String(open));
    button.replaceChild(icon(open ? CROSS : BUBBLE, !open), button.firstChild);
    if (open) unread = 0;
    showUnread();
    if (open) button.setAttribute("aria-label", label[1]);
  }

  button.addEventListener("click", () => toggle(frame.hidden));
  close.addEventListener("click", () => toggle(false));
  // Only the chat page in our own frame may count as a reply.
  window.addEventListener("message", (event) => {
    if (event.origin !== chat.origin || event.source !== frame.contentWindow) return;
    if (!event.data || event.data.type !== "atendimento:reply" || !frame.hidden) return;
    unread += 1;
    showUnread();
  });
  document.body.append(frame, close, button);
})();
