"""Text normalisation shared by the knowledge-base index and the queries it answers.

The same pipeline runs over the base at load time and over every question at reply time, so a
customer typing "vc entrega hj?" and a base saying "Você entrega hoje?" meet on the same words:

    text --fold--> "vc entrega hj" --tokenise--> [vc, entrega, hj] --expand--> [voce, entrega, hoje]
         --content--> [entrega, hoje] (stop words out) --stem (stemmer.py)--> [entreg, hoj]

Everything here is generic chat language for Portuguese and English; nothing names the topics of a
particular base, so the engine behaves the same on bases it has never seen.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

Language = Literal["pt", "en"]
LANGUAGES: tuple[Language, ...] = ("pt", "en")

# Letters on both sides of a hyphen or apostrophe belong to one word: "e-mail", "wi-fi", "don't".
_JOINERS = re.compile(r"(?<=[a-z0-9])['’`-](?=[a-z0-9])")
_TOKEN = re.compile(r"[a-z0-9]+")
# "oiii", "obrigadooo": a letter typed three or more times in a row is one letter in both languages.
_REPEATS = re.compile(r"([a-z])\1{2,}")
# "12x" is "12 vezes" / "12 times" in shop talk; split it so the number still matches.
_TIMES = re.compile(r"^(\d+)x$")
# English clitics are split off before the apostrophe goes: "we'll" is "we will", not the word
# "well"; "i'd" is not "id". "'s" reads as "is" ("that's all" is small talk); after a possessive
# ("shop's") the extra "is" is a stop word and harmless.
_EN_CLITICS = re.compile(r"(?<=[a-z])['’`](re|ll|ve|d|m|s)\b")
_EN_CLITIC_WORDS = {"re": " are", "ll": " will", "ve": " have", "d": " would", "m": " am", "s": " is"}
_LAUGHTER = re.compile(r"^(?:k{2,}|(?:ha){2,}h?|(?:he){2,}|(?:rs){2,}|(?:hue){2,}|lol|lmao)$")

# Informal spellings and chat abbreviations, mapped to the words a base would use.
ABBREVIATIONS: Mapping[Language, Mapping[str, tuple[str, ...]]] = {
    "pt": {
        "vc": ("voce",),
        "vcs": ("voces",),
        "voceis": ("voces",),
        "ce": ("voce",),
        "oce": ("voce",),
        "pq": ("porque",),
        "pk": ("porque",),
        "q": ("que",),
        "oq": ("o", "que"),
        "qq": ("qualquer",),
        "ta": ("esta",),
        "tah": ("esta",),
        "to": ("estou",),
        "tou": ("estou",),
        "tava": ("estava",),
        "tavam": ("estavam",),
        "tamo": ("estamos",),
        "pra": ("para",),
        "pro": ("para", "o"),
        "pros": ("para", "os"),
        "pras": ("para", "as"),
        "td": ("tudo",),
        "tds": ("todos",),
        "msg": ("mensagem",),
        "msgs": ("mensagens",),
        "tb": ("tambem",),
        "tbm": ("tambem",),
        "tmb": ("tambem",),
        "n": ("nao",),
        "naum": ("nao",),
        "nn": ("nao",),
        "eh": ("e",),
        "hj": ("hoje",),
        "qdo": ("quando",),
        "qnd": ("quando",),
        "qndo": ("quando",),
        "qto": ("quanto",),
        "qtos": ("quantos",),
        "qtas": ("quantas",),
        "qts": ("quantos",),
        "ql": ("qual",),
        "obg": ("obrigado",),
        "obgd": ("obrigado",),
        "obgda": ("obrigada",),
        "brigado": ("obrigado",),
        "brigada": ("obrigada",),
        "vlw": ("valeu",),
        "vlws": ("valeu",),
        "blz": ("beleza",),
        "mt": ("muito",),
        "mto": ("muito",),
        "mta": ("muita",),
        "mts": ("muitos",),
        "dps": ("depois",),
        "agr": ("agora",),
        "ngm": ("ninguem",),
        "alg": ("alguem",),
        "qqr": ("qualquer",),
        "qlqr": ("qualquer",),
        "cmg": ("comigo",),
        "ctg": ("contigo",),
        "fds": ("fim", "de", "semana"),
        "aki": ("aqui",),
        "kd": ("cade",),
        "num": ("em", "um"),
        "numa": ("em", "uma"),
        "pfv": ("por", "favor"),
        "pf": ("por", "favor"),
        "pfvr": ("por", "favor"),
        "nd": ("nada",),
        "nda": ("nada",),
        "ctz": ("certeza",),
        "vdd": ("verdade",),
        "flw": ("falou",),
        "sdds": ("saudades",),
        "mds": ("meu", "deus"),
        "pls": ("por", "favor"),
        "msm": ("mesmo",),
        "zap": ("whatsapp",),
        "zapzap": ("whatsapp",),
        "wpp": ("whatsapp",),
        "whats": ("whatsapp",),
        "wats": ("whatsapp",),
        "insta": ("instagram",),
        "cel": ("celular",),
        "tel": ("telefone",),
        "info": ("informacao",),
        "infos": ("informacoes",),
        "qm": ("quem",),
        "ond": ("onde",),
        "aq": ("aqui",),
        "vo": ("vou",),
        "bj": ("beijo",),
        "bjs": ("beijos",),
        "abs": ("abracos",),
        "add": ("adicionar",),
    },
    "en": {
        "u": ("you",),
        "ur": ("your",),
        "urs": ("yours",),
        "r": ("are",),
        "y": ("why",),
        "pls": ("please",),
        "plz": ("please",),
        "plse": ("please",),
        "thx": ("thanks",),
        "thnx": ("thanks",),
        "tnx": ("thanks",),
        "ty": ("thank", "you"),
        "tysm": ("thank", "you"),
        "wanna": ("want", "to"),
        "gonna": ("going", "to"),
        "gotta": ("got", "to"),
        "cant": ("cannot",),
        "dont": ("do", "not"),
        "doesnt": ("does", "not"),
        "didnt": ("did", "not"),
        "isnt": ("is", "not"),
        "arent": ("are", "not"),
        "wasnt": ("was", "not"),
        "wont": ("will", "not"),
        "havent": ("have", "not"),
        "hasnt": ("has", "not"),
        "couldnt": ("could", "not"),
        "shouldnt": ("should", "not"),
        "wouldnt": ("would", "not"),
        "werent": ("were", "not"),
        "hadnt": ("had", "not"),
        "mustnt": ("must", "not"),
        "neednt": ("need", "not"),
        "aint": ("is", "not"),
        "im": ("i", "am"),
        "ive": ("i", "have"),
        "youre": ("you", "are"),
        "theyre": ("they", "are"),
        "youll": ("you", "will"),
        "youve": ("you", "have"),
        "youd": ("you", "would"),
        "theyll": ("they", "will"),
        "theyve": ("they", "have"),
        "weve": ("we", "have"),
        "itll": ("it", "will"),
        "whats": ("what", "is"),
        "hows": ("how", "is"),
        "wheres": ("where", "is"),
        "whens": ("when", "is"),
        "whos": ("who", "is"),
        "thats": ("that", "is"),
        "theres": ("there", "is"),
        "idk": ("i", "do", "not", "know"),
        "b4": ("before",),
        "bc": ("because",),
        "cuz": ("because",),
        "coz": ("because",),
        "msg": ("message",),
        "msgs": ("messages",),
        "info": ("information",),
        "acct": ("account",),
        "pw": ("password",),
        "pwd": ("password",),
        "tmrw": ("tomorrow",),
        "tmr": ("tomorrow",),
        "2moro": ("tomorrow",),
        "ppl": ("people",),
        "abt": ("about",),
        "w": ("with",),
        "wo": ("without",),
        "n": ("and",),
        "ok": ("okay",),
        "k": ("okay",),
        "kk": ("okay",),
        "nvm": ("never", "mind"),
        "asap": ("as", "soon", "as", "possible"),
        "pic": ("picture",),
        "pics": ("pictures",),
        "convo": ("conversation",),
        "yr": ("year",),
        "yrs": ("years",),
        "mos": ("months",),
        "hr": ("hour",),
        "hrs": ("hours",),
        "mins": ("minutes",),
        "secs": ("seconds",),
        "tho": ("though",),
        "thru": ("through",),
        "gud": ("good",),
        "gr8": ("great",),
        "l8r": ("later",),
        "cya": ("see", "you"),
        "bday": ("birthday",),
    },
}


def _word_set(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Words that carry no topic: articles, pronouns, prepositions, question words, auxiliary and
# "wanting" verbs, light verbs whose object says what is meant ("fazer", "dar"; "take", "make"),
# fillers. Removing them makes "eu queria saber se vocês entregam" and
# "vocês entregam?" the same query.
STOP_WORDS: Mapping[Language, frozenset[str]] = {
    "pt": _word_set(
        """
        a o as os um uma uns umas de da do das dos em no na nos nas num numa ao aos
        e ou mas nem que se para por pelo pela pelos pelas com sem sob sobre ate entre apos desde
        contra durante perante depois antes enquanto
        eu tu ele ela nos vos eles elas me te lhe lhes mim ti si comigo contigo conosco consigo
        meu minha meus minhas teu tua teus tuas seu sua seus suas nosso nossa nossos nossas
        voce voces senhor senhora gente cara mano moca moco amigo amiga pessoal
        este esta estes estas isto esse essa esses essas isso aquele aquela aqueles aquelas aquilo
        aqui ai ali la ca onde quando como qual quais quanto quanta quantos quantas quem porque
        cade tao ja ainda tambem so somente apenas muito muita muitos muitas mais menos
        bem mal agora entao pois logo assim tipo coisa coisas algo alguma algum algumas alguns
        nenhum nenhuma todo toda todos todas tudo nada outro outra outros outras mesmo mesma
        ser sou es e somos sao era eram foi foram fui seja sejam sera seria
        estar estou esta estamos estao estava estavam esteve estive
        ter tenho tem temos tinha tinham tive teve ha haver havia houve
        fazer faco faz fazem fiz fez feito fazendo
        poder posso pode podem podemos podia poderia poderiam
        querer quero quer queria queremos gostaria gostariamos desejo
        precisar preciso precisa precisamos precisava necessito
        saber sei sabe saberia conseguir consigo consegue conseguem
        dar da dou deu vou vai vamos vao ir indo fica ficar vir vem vim veio vieram
        favor ok okay sim nao ne neh tal oi ola hein ue uai opa ah oh eh hm hmm
        certo beleza entendi obrigado obrigada valeu
        """
    ),
    "en": _word_set(
        """
        a an the and or but nor so if then than that this these those there here of to in on at by
        for from with without about into onto under as per via since until while during before after
        now once
        i me my mine myself we us our ours you your yours he him his she her hers it its they them
        their theirs one ones someone somebody something anything everything nothing
        what which who whom whose when where why how whats
        is am are was were be been being do does did doing done have has had having
        can could may might must shall should will would
        want wanted wanna need needed like please pls tell know let lets get got getting
        just really very much many more most some any all no not yes yeah yep ok okay
        also too still already again even only ever else maybe actually basically
        guys guy hey hi hello thanks thank sir madam dear folks team
        take takes took taken taking make makes made making give gives gave given giving put puts
        putting come comes came coming
        """
    ),
}


# Question words say what kind of answer is wanted ("quando" a date, "onde" a place, "how much" a
# price): weak evidence, but they tell "When is my bill due?" from "How can I pay my bill?". They
# stay stop words for small talk; the index reads them as terms of little weight. The commonest
# ("como", "qual", "what") ask for anything and stay out.
QUESTION_WORDS: Mapping[Language, frozenset[str]] = {
    "pt": _word_set("quando onde quanto quanta quantos quantas porque"),
    "en": _word_set("when where how why much many"),
}


# Numbers written as words: like a number in digits, a detail of the customer's case ("dois
# cupons", "two rooms"), not a topic the base lacks. "um"/"one" are stop words already.
NUMBER_WORDS: Mapping[Language, frozenset[str]] = {
    "pt": _word_set("dois duas tres quatro cinco seis sete oito nove dez"),
    "en": _word_set("two three four five six seven eight nine ten"),
}


# Paraphrases customers of any business use for the same request. A query word the base never
# uses stands for the words of its group that the base does use ("reach us" -> "contact"), a little
# below the word itself (index.Tuning.synonym_similarity). Only generic service vocabulary belongs
# here (contact, price, place, refund, sign-in, wi-fi): a group naming a trade's products would
# make the engine answer about them on bases of other trades.
SYNONYMS: Mapping[Language, tuple[frozenset[str], ...]] = {
    "pt": (
        _word_set("contato contatar telefone ligar"),
        _word_set("custa custo preco cobra cobram cobrar cobranca taxa"),
        _word_set("prazo demora demoram demorar"),
        _word_set("regiao area bairro vizinhanca localidade"),
        _word_set("reembolso estorno ressarcimento"),
        _word_set("entrar logar login acessar"),
        _word_set("wifi internet"),
        _word_set("gratis gratuito gratuita gratuitos gratuitas graca"),
        _word_set("buscar retirar retirada"),
        _word_set("cancelar cancelamento desistir desfazer"),
        _word_set("atualizar alterar mudar editar"),
        _word_set("motoboy entregador motoqueiro"),
        _word_set("app aplicativo"),
    ),
    "en": (
        _word_set("contact reach phone call telephone talk speak"),
        _word_set("cost price charge fee"),
        _word_set("area region neighborhood neighbourhood location"),
        _word_set("refund reimbursement"),
        _word_set("login signin"),
        _word_set("wifi internet"),
        _word_set("free complimentary"),
        _word_set("signup register registration enroll"),
        _word_set("person human agent representative"),
        _word_set("lock freeze block"),
        _word_set("raise increase"),
        _word_set("withdraw withdrawal"),
        _word_set("activate activation"),
        _word_set("app application"),
    ),
}

# Two-word paraphrases of one word, the second word at most _PHRASE_GAP words after the first
# ("send it back" -> "return"). Only queries are rewritten, and only into a word the base can
# match (index.KbIndex). Rewriting the base too shrank its questions: "Em quanto tempo o dinheiro
# volta?" kept only "tempo" and "reembolso", and drew every "quanto tempo" question to refunds.
PHRASES: Mapping[Language, Mapping[tuple[str, str], str]] = {
    "pt": {
        ("dinheiro", "volta"): "reembolso",
        ("quanto", "tempo"): "prazo",
        ("mandar", "volta"): "devolver",
        ("enviar", "volta"): "devolver",
    },
    "en": {
        ("money", "back"): "refund",
        ("send", "back"): "return",
        ("log", "in"): "login",
        ("sign", "in"): "login",
        ("sign", "up"): "signup",
        ("turn", "on"): "activate",
        ("pull", "out"): "withdraw",
        ("take", "out"): "withdraw",
    },
}
_PHRASE_GAP = 2


@functools.lru_cache(maxsize=256)
def fold(text: str) -> str:
    """Lower-case and strip accents: "Não É" -> "nao e".

    Cached: one message's text is folded by several readers in turn (language, the request for a
    person, a typed choice, the tokens), six times per KB reply. Text without accents (most chat
    typing) skips the per-character walk: no ASCII character is a combining mark."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    if decomposed.isascii():
        return decomposed
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def tokenise(text: str) -> list[str]:
    """Folded word tokens; laughter ("kkkk", "haha") dropped, letter repeats squeezed."""
    joined = _JOINERS.sub("", fold(text))
    # A letter run lies within one token: with none in the text, no token is searched for one.
    repeats = _REPEATS.search(joined) is not None
    words: list[str] = []
    for raw in _TOKEN.findall(joined):
        if _LAUGHTER.match(raw):
            continue
        word = _REPEATS.sub(r"\1", raw) if repeats else raw
        times = _TIMES.match(word) if word[-1] == "x" else None
        words.extend((times.group(1), "x") if times else (word,))
    return words


def expand(words: Iterable[str], language: Language) -> list[str]:
    """Replace chat abbreviations with the words they stand for."""
    table = ABBREVIATIONS[language]
    times_word = "vezes" if language == "pt" else "times"
    out: list[str] = []
    previous = ""
    for word in words:
        if word == "x" and previous.isdigit():
            out.append(times_word)
        else:
            out.extend(table.get(word, (word,)))
        previous = word
    return out


_WORD = re.compile(r"\w+")


def spelled_out(text: str, language: Language) -> str:
    """`text` with its chat abbreviations written out ("qto custa p/ vcs" -> "quanto custa p/
    voces"), accents and punctuation kept: the multilingual model was trained on written language
    and reads "quanto" far better than "qto"."""
    table = ABBREVIATIONS[language]

    def written(match: re.Match[str]) -> str:
        word = match.group()
        return " ".join(table.get(fold(word), (word,)))

    return _WORD.sub(written, text)


def words_of(text: str, language: Language) -> list[str]:
    """Tokenised and expanded words, stop words still in (small talk needs them)."""
    if language == "en":
        text = _EN_CLITICS.sub(lambda m: _EN_CLITIC_WORDS[m.group(1)], fold(text))
    return expand(tokenise(text), language)


def join_phrases(words: Sequence[str], table: Mapping[tuple[str, str], str]) -> list[str]:
    """Each two-word paraphrase of `table` replaced with its word, in place of the first."""
    out = list(words)
    i = 0
    while i < len(out):
        for j in range(i + 1, min(i + 2 + _PHRASE_GAP, len(out))):
            word = table.get((out[i], out[j]))
            if word is not None:
                out[i] = word
                del out[j]
                break
        i += 1
    return out


def is_content(word: str, language: Language) -> bool:
    """A word that can say what a question is about: not a stop word, not a lone letter."""
    if len(word) == 1:
        return word.isdigit()
    return word not in STOP_WORDS[language]
