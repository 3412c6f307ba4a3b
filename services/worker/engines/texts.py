"""The texts the bot writes itself, in every language it speaks (languages.py): the hand-over,
the question back and its options, commands, the away message, the rating's question, the
customer's data requests. The knowledge base's own answers and fallback come from the base.
"""

from __future__ import annotations

from collections.abc import Mapping

from .languages import ReplyLanguage

REPLIES: Mapping[ReplyLanguage, Mapping[str, str]] = {
    "pt": {
        "reset": "Pronto! Esqueci nossa conversa até aqui. Como posso ajudar?",
        "handoff": "Certo! Vou chamar um atendente humano: uma pessoa vai continuar esta conversa por aqui em breve.",
        "escalation": "Desculpe, não estou conseguindo ajudar com isso. Vou chamar um atendente humano: uma pessoa"
        " vai continuar esta conversa por aqui em breve.",
        # The button of the handoff offer ("Quer falar com um atendente?"): its tap is a request.
        "offer": "Falar com atendente",
        # A question back lists its options, numbered, between these two lines.
        "clarify": "Não tenho certeza se entendi. Você quis dizer:",
        "pick": "Toque numa opção ou responda com o número.",
        # A choice of something not offered (any more): the options in force again, or none.
        "stale": "Essa opção não está mais disponível. Por favor, escolha de novo:",
        "ask": "Essa opção não está mais disponível. Por favor, escreva sua pergunta.",
        # The base's "not found" for a customer in a language the base is not translated into.
        "fallback": "Desculpe, não encontrei essa informação. Quer falar com um atendente?",
        # An opt-out of proactive messages; any later message opts back in.
        "opt_out": "Pronto, você não vai mais receber nossas mensagens automáticas. Se mudar de ideia, é só"
        " nos escrever.",
        # The customer's data (engines/privacy.py): erasure asked, confirmed or not, a copy asked.
        "privacy_confirm": "Você quer que eu apague todos os seus dados (mensagens, histórico e pedidos)?"
        " Isso não pode ser desfeito.",
        "privacy_yes": "Sim, apagar",
        "privacy_no": "Não, manter",
        "privacy_erased": "Pronto: apaguei todos os seus dados. Se escrever de novo, começamos uma conversa nova.",
        "privacy_kept": "Tudo bem, não apaguei nada.",
        "privacy_export": "Anotei seu pedido de uma cópia dos seus dados: nossa equipe vai enviá-la em até 15 dias.",
        # Outside BUSINESS_HOURS: `{when}` is one of the three `when_*` below.
        "away": "Nosso time está fora do horário de atendimento agora. Deixei sua conversa na fila: uma pessoa"
        " vai continuar por aqui {when}. Pode deixar sua mensagem: ela vai ler tudo.",
        "when_today": "hoje às {time}",
        "when_tomorrow": "amanhã às {time}",
        "when_day": "{weekday}, {day:02d}/{month:02d}, às {time}",
        "weekdays": "segunda-feira,terça-feira,quarta-feira,quinta-feira,sexta-feira,sábado,domingo",
        "months": "janeiro,fevereiro,março,abril,maio,junho,julho,agosto,setembro,outubro,novembro,dezembro",
        "csat_ask": "Como você avalia este atendimento? Toque numa nota de 1 (ruim) a 5 (ótimo).",
        "csat_thanks": "Obrigado pela avaliação! Se quiser, escreva um comentário sobre o atendimento.",
    },
    "en": {
        "reset": "Done! I have forgotten our conversation so far. How can I help?",
        "handoff": "Sure! I am calling a human agent: a person will take over this conversation here shortly.",
        "escalation": "Sorry, I am not managing to help with that. I am calling a human agent: a person will take"
        " over this conversation here shortly.",
        "offer": "Talk to an agent",
        "clarify": "I am not sure I understood. Did you mean:",
        "pick": "Tap an option or reply with its number.",
        "stale": "That option is no longer available. Please choose again:",
        "ask": "That option is no longer available. Please write your question.",
        "privacy_confirm": "Do you want me to delete all your data (messages, history and requests)? This cannot be"
        " undone.",
        "privacy_yes": "Yes, delete",
        "privacy_no": "No, keep it",
        "privacy_erased": "Done: I have deleted all your data. If you write again, we start a new conversation.",
        "privacy_kept": "All right, nothing was deleted.",
        "privacy_export": "I have recorded your request for a copy of your data: our team will send it within 15 days.",
        "opt_out": "Done, you will not get our automatic messages any more. If you change your mind, just write to us.",
        "fallback": "Sorry, I could not find that information. Would you like to talk to an agent?",
        "away": "Our team is outside business hours right now. I have put your conversation in the queue: a"
        " person will continue here {when}. Feel free to leave your message: they will read it all.",
        "when_today": "today at {time}",
        "when_tomorrow": "tomorrow at {time}",
        "when_day": "on {weekday}, {month_name} {day}, at {time}",
        "weekdays": "Monday,Tuesday,Wednesday,Thursday,Friday,Saturday,Sunday",
        "months": "January,February,March,April,May,June,July,August,September,October,November,December",
        "csat_ask": "How would you rate this conversation? Tap a score from 1 (poor) to 5 (great).",
        "csat_thanks": "Thank you for your rating! If you like, write a comment about the service.",
    },
    "es": {
        "reset": "¡Listo! Olvidé nuestra conversación hasta aquí. ¿En qué puedo ayudar?",
        "handoff": "¡Claro! Voy a llamar a un agente humano: una persona continuará esta conversación aquí en breve.",
        "escalation": "Lo siento, no estoy logrando ayudar con eso. Voy a llamar a un agente humano: una persona"
        " continuará esta conversación aquí en breve.",
        "offer": "Hablar con un agente",
        "clarify": "No estoy seguro de haber entendido. ¿Quisiste decir:",
        "pick": "Toca una opción o responde con el número.",
        "stale": "Esa opción ya no está disponible. Por favor, elige de nuevo:",
        "ask": "Esa opción ya no está disponible. Por favor, escribe tu pregunta.",
        "opt_out": "Listo, ya no recibirás nuestros mensajes automáticos. Si cambias de idea, solo escríbenos.",
        "fallback": "Lo siento, no encontré esa información. ¿Quieres hablar con un agente?",
        "privacy_confirm": "¿Quieres que borre todos tus datos (mensajes, historial y solicitudes)? No se puede"
        " deshacer.",
        "privacy_yes": "Sí, borrar",
        "privacy_no": "No, mantener",
        "privacy_erased": "Listo: borré todos tus datos. Si vuelves a escribir, empezamos una conversación nueva.",
        "privacy_kept": "De acuerdo, no borré nada.",
        "privacy_export": "Anoté tu solicitud de una copia de tus datos: nuestro equipo la enviará en un plazo de"
        " 15 días.",
        "away": "Nuestro equipo está fuera del horario de atención ahora. Dejé tu conversación en la fila: una"
        " persona continuará aquí {when}. Puedes dejar tu mensaje: lo leerá todo.",
        "when_today": "hoy a las {time}",
        "when_tomorrow": "mañana a las {time}",
        "when_day": "el {weekday} {day} de {month_name}, a las {time}",
        "weekdays": "lunes,martes,miércoles,jueves,viernes,sábado,domingo",
        "months": "enero,febrero,marzo,abril,mayo,junio,julio,agosto,septiembre,octubre,noviembre,diciembre",
        "csat_ask": "¿Cómo calificas esta atención? Toca una nota de 1 (mala) a 5 (excelente).",
        "csat_thanks": "¡Gracias por tu calificación! Si quieres, escribe un comentario sobre la atención.",
    },
}
