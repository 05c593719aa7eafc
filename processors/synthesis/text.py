"""Turning feedback sentences into short rules, and telling when two rules disagree.

People explain mistakes conversationally ("that's wrong, you should have used the
v2 API!!"); a prompt wants a short imperative ("Use the v2 API."). The functions
here strip the conversational frame with plain patterns, never inventing words that
were not in the feedback, and describe a rule's shape (negated? "A over B"? a
choice among exclusive values like languages?) so consolidation can detect that a
new rule replaces an old one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from processors.embedding import GENERIC, STOPWORDS, content_tokens, stem, words

MAX_RULE_WORDS: Final = 30

_PUNCT: Final = r"[\s,.!:;\-\u2013\u2014]*"
_LEADING_FILLER: Final[tuple[re.Pattern[str], ...]] = tuple(
    re.compile(r"^(?:" + p + r")(?![\w'])" + _PUNCT, re.IGNORECASE)
    for p in (
        r"(?:that|this|it|the (?:answer|response|output|reply|code))(?:'s| is| was)"
        r"(?: (?:just|still|completely|totally|all))? (?:wrong|incorrect|not (?:right|correct|true"
        r"|what i (?:asked|wanted|meant))|bad|outdated|broken|useless|a mistake)",
        # interjections only when punctuated: "no, use v2" but not "no emojis"
        r"(?:wrong|incorrect|nope|no|nah|ugh|hmm+|well|so|ok(?:ay)?|hey|yes|yeah|sorry|oops"
        r"|argh|listen)(?=\s*[,.!:;\-])",
        r"(?:again|seriously|actually|also|and|but|fyi|note|btw|come on)",
        r"(?:as|like) i (?:said|told you|mentioned|explained)"
        r"(?: (?:before|already|earlier|yesterday))?",
        r"i (?:already )?(?:told|asked) you(?: (?:this|that))?(?: (?:before|already|yesterday"
        r"|\w+ times))?(?: that)?",
        r"how many times do i have to (?:say|tell you)(?: this| that)?",
        r"(?:please|pls|plz|kindly)",
        r"(?:next time|in (?:the )?future|from now on|going forward|for future reference)",
        r"(?:make sure|remember|be sure|don't forget)(?: to| that you| you)?",
        r"it (?:would|will) be (?:better|nicer|good|great) (?:to|if you)",
        r"(?:can|could|would|will) you(?: please)?",
        r"i(?:'d| would)? (?:like|want|need) you to",
        r"(?:you )?(?:need to|have to|must|were supposed to|forgot to|didn't)",
        r"we(?= (?:use|prefer|deploy|write|need|want|run|call|always|never|only)\b)",
    )
)
# "you should have used X": the only frame after which a past participle means "do X"
_MODAL_PERFECT: Final = re.compile(
    r"^(?:you )?(?:should|could|would|ought to|might)(?!\s+you\b)(?P<have> have| of|'ve)?" + _PUNCT,
    re.IGNORECASE,
)
_NEGATED_FRAME: Final = re.compile(
    r"^(?:you )?(?:should ?n[o']t|should not|shouldn't|must ?n[o']t|must not|do not|don't"
    r"|never(?: ever)?)(?: have)?" + _PUNCT,
    re.IGNORECASE,
)
_PREFER_FRAME: Final = re.compile(
    r"^i(?:'d| would)? (?:prefer|rather have)\b(?! (?:it )?if\b)", re.IGNORECASE
)
_PREFER_IF: Final = re.compile(
    r"^i(?:'d| would)? (?:prefer|like it|rather) (?:it )?if you\s+", re.IGNORECASE
)
# "the answer should be in German" -> "Keep answers in German"
_SUBJECT_BE: Final = re.compile(
    r"^(?:the |your )?(?:answers?|responses?|replies|reply|outputs?)\s+(?:should|must|needs? to"
    r"|has to|have to) be\s+",
    re.IGNORECASE,
)
_SUBJECT_DO: Final = re.compile(
    r"^(?:the |your )?(?:answers?|responses?|replies|reply|outputs?)\s+(?:should|must|needs? to"
    r"|has to|have to)\s+(?=\w)",
    re.IGNORECASE,
)
# "you used v1": describes the mistake; only a rule ("don't use v1") if nothing better is said
_YOU_DID: Final = re.compile(r"^you\s+(?P<verb>[a-z]+)\b\s*", re.IGNORECASE)
_TRAILING_FILLER: Final = re.compile(
    r"(?:[\s,;:\-]*(?:\b(?:please|pls|plz|thanks|thank you|thx|next time|again|ok(?:ay)?"
    r"|from now on|in (?:the )?future|going forward|for (?:the )?future)\b|!+|\?+|\.+))+$",
    re.IGNORECASE,
)
_SENTENCE_SPLIT: Final = re.compile(r"(?<=[.!?;])\s+|\s*;\s*|\n+")
_PAST: Final[dict[str, str]] = {
    "used": "use",
    "said": "say",
    "told": "tell",
    "wrote": "write",
    "written": "write",
    "gave": "give",
    "given": "give",
    "made": "make",
    "did": "do",
    "done": "do",
    "kept": "keep",
    "left": "leave",
    "put": "put",
    "set": "set",
    "sent": "send",
    "ran": "run",
    "run": "run",
    "chose": "choose",
    "chosen": "choose",
    "took": "take",
    "taken": "take",
    "shown": "show",
    "went": "go",
    "gone": "go",
    "got": "get",
    "asked": "ask",
    "called": "call",
    "included": "include",
    "mentioned": "mention",
    "added": "add",
    "removed": "remove",
    "deleted": "delete",
    "checked": "check",
    "cited": "cite",
    "linked": "link",
    "tested": "test",
    "answered": "answer",
    "replied": "reply",
    "responded": "respond",
    "explained": "explain",
    "suggested": "suggest",
    "recommended": "recommend",
    "formatted": "format",
    "translated": "translate",
    "converted": "convert",
    "returned": "return",
    "tried": "try",
    "stopped": "stop",
    "passed": "pass",
    "pointed": "point",
    "quoted": "quote",
    "verified": "verify",
    "validated": "validate",
    "confirmed": "confirm",
    "followed": "follow",
    "deployed": "deploy",
    "installed": "install",
    "escaped": "escape",
    "summarised": "summarise",
    "summarized": "summarize",
}
_PAIR: Final = re.compile(
    r"^(?P<a>.+?)[\s,;]+(?:over|instead of|rather than|not|and not|but not|in place of)"
    r"\s+(?P<b>.+)$",
    re.IGNORECASE,
)
_EXCLUSIVE: Final[dict[str, frozenset[str]]] = {
    name: frozenset(stem(w) for w in values.split())
    for name, values in {
        "language": "english german french spanish italian portuguese dutch polish swedish danish"
        " norwegian finnish czech russian ukrainian turkish arabic hebrew hindi japanese chinese"
        " mandarin korean vietnamese indonesian greek",
        "case": "snake_case camelcase pascalcase kebab-case kebab snake camel pascal",
        "indent": "tab tabs space spaces",
        "format": "json yaml yml toml xml csv markdown html table plaintext",
        "tone": "formal informal casual",
        "length": "short long",
        "units": "metric imperial",
        "temperature": "celsius fahrenheit",
        "currency": "euro euros eur dollar dollars usd gbp pound pounds sterling yen jpy swiss"
        " franc francs chf yuan renminbi rmb cny rupee rupees inr krona kronor krone kroner sek"
        " nok dkk zloty pln",
        "spelling": "british american",
        "js_package_manager": "npm pnpm yarn bun",
        "py_package_manager": "pip poetry uv pipenv conda",
        "quotes": "single double",
        "time": "utc local",
    }.items()
}
_VERSION_RE: Final = re.compile(r"^v\d+(?:\.\d+)*$")
# verbs and adverbs that frame an instruction to an assistant without naming its subject:
# "Stick to npm." and "Use pnpm now." are about the same thing, the package manager
_FRAME_TEXT: Final = (
    "suggest recommend include write give provide mention list explain describe quote say"
    " tell talk speak offer end finish start begin stick follow return send only every"
    " never ever still now here forgot remember mean switch switched moved"
)
FRAME_WORDS: Final = frozenset(stem(w) for w in _FRAME_TEXT.split())
_TOO_RE: Final = re.compile(r"\btoo\s+(?:much\s+|many\s+)?([\w-]+)", re.IGNORECASE)
_CLAUSE_SPLIT: Final = re.compile(r"[,;:]|\s(?:and|but|so)\s|\s-\s|\(|\)", re.IGNORECASE)
# "v1 is deprecated": a statement that something is to be avoided, without a "not"
_RETIRED_THING: Final = re.compile(
    r"\b(?:is|are|was|were|has been|have been|got)\s+(?:now\s+)?(?:deprecated|obsolete|outdated"
    r"|dead|wrong|broken|gone|removed|retired|legacy|unsupported|discontinued|banned|forbidden)\b",
    re.IGNORECASE,
)


# Words that react to an answer without saying what to do differently: acknowledgements,
# interjections, praise and complaint adjectives, hedges, the speaker's own thinking or
# plans. A clause made only of these (and frame words such as "use" or "not") is chatter:
# it may rate the answer, but it carries no instruction to turn into a rule. Words that
# name a preference dimension ("short", "formal", "simple", "friendly") are *not* here.
_REACTION_TEXT: Final = """
    meh lol lmao rofl haha hahaha heh hehe wow whoa ah aha huh hm hmm hmmm ugh eh oops yay
    yikes ouch welp k kk alright yes yep yup ya nope nah sure thx ty cheers gotcha noted
    understood agreed cool nice neat sweet awesome great fine fair enough true indeed exactly
    wonderful lovely brilliant excellent fantastic amazing perfect superb terrible awful
    horrible poor weird strange odd boring interesting impressive impressed surprising
    surprised disappointing disappointed confusing confused mediocre decent solid useful
    useless helpful unhelpful whatever dunno idk unsure maybe perhaps probably possibly guess
    think thought know knew wonder suppose believe feel felt expect expected unexpected idea
    opinion later tomorrow soon sometime eventually anyway anyways kinda sorta bit kind sort
    pretty somewhat little lot much stuff let see mind decide consider bother care matter
    works worked tbh imo imho ngl honestly frankly lmk
    i'll i'd i'm that's what's let's we'll we're you'll there's
"""
_REACTION_WORDS: Final[frozenset[str]] = frozenset(_REACTION_TEXT.split())
_LAUGH_RE: Final = re.compile(r"^(?:(?:ha|he|hi)+h?|lo+l|hm+|u+gh|a+h+|o+h+|w+o+w+)$")
# "I'll check later", "let me think": the speaker's own next step, not one for the agent
_SPEAKER_PLAN: Final = re.compile(
    r"^(?:i'll|i will|i'm going to|i am going to|let me|i (?:need|have|want) to (?:think|check"
    r"|look|see|read|test|try|decide|consider|ponder|digest|sleep))\b",
    re.IGNORECASE,
)


def is_chatter(text: str) -> bool:
    """True when ``text`` only reacts (thanks, "meh", "not sure about this one", "I'll check
    later") and gives no instruction or preference a rule could carry."""
    text = re.sub(r"\s+", " ", text.replace("\u2019", "'")).strip()
    clauses = [c.strip(" ,.!?;:-") for c in _SENTENCE_SPLIT.split(text)]
    clauses = [c for c in clauses if c]
    return all(_clause_is_chatter(c) for c in clauses)


def _clause_is_chatter(clause: str) -> bool:
    body, _, _ = _strip_leading(clause)
    if _SPEAKER_PLAN.match(body.strip()):
        return True
    for word in words(body):
        if word in STOPWORDS or word == "not" or stem(word) in GENERIC:
            continue
        if word in _REACTION_WORDS or _LAUGH_RE.match(word):
            continue
        return False
    return True


def _past_to_imperative(text: str) -> str:
    head, _, rest = text.partition(" ")
    lower = head.lower()
    if lower in _PAST:
        return f"{_PAST[lower]} {rest}".strip()
    return text


def _strip_leading(text: str) -> tuple[str, bool, bool]:
    """Remove the conversational frame; say whether it negated and whether it was perfect."""
    negated = perfect = False
    for _ in range(12):  # frames stack: "no, as I said, you should have ..."
        match = _NEGATED_FRAME.match(text)
        if match:
            text, negated, perfect = text[match.end() :], True, "have" in match.group(0).lower()
            continue
        match = _MODAL_PERFECT.match(text)
        if match:
            text, perfect = text[match.end() :], bool(match.group("have"))
            continue
        for pattern in _LEADING_FILLER:
            match = pattern.match(text)
            if match and match.end() > 0:
                text = text[match.end() :]
                break
        else:
            return text, negated, perfect
    return text, negated, perfect


def _clause_to_imperative(clause: str) -> str:
    clause = clause.strip().strip("\"'")
    if _PREFER_FRAME.match(clause):
        clause = _PREFER_FRAME.sub("prefer", clause, count=1)
    body, negated, perfect = _strip_leading(clause)
    if _PREFER_IF.match(body):
        body, perfect = _PREFER_IF.sub("", body, count=1), True
    if _SUBJECT_BE.match(body):
        body = _SUBJECT_BE.sub("keep answers ", body, count=1)
    elif _SUBJECT_DO.match(body):
        body = _SUBJECT_DO.sub("", body, count=1)
    body = _TRAILING_FILLER.sub("", body).strip().strip("\"'")
    if not body:
        return ""
    if perfect:
        body = _past_to_imperative(body)
    if negated:
        body = "don't " + body
    return body


def _described_mistake(clause: str) -> str:
    """ "You used v1 again" -> "don't use v1": the complaint turned into its rule."""
    body, _, _ = _strip_leading(clause.strip())
    match = _YOU_DID.match(body)
    if not match or match.group("verb").lower() not in _PAST:
        return ""
    rest = _TRAILING_FILLER.sub("", body[match.end() :]).strip()
    return f"don't {_PAST[match.group('verb').lower()]} {rest}".strip() if rest else ""


def _has_content(text: str) -> bool:
    return any(t not in GENERIC for t in content_tokens(text))


def to_imperative(text: str, max_words: int = MAX_RULE_WORDS) -> str:
    """A short imperative rule from a feedback sentence, or "" if it says nothing actionable.

    Only removes words (frames, filler, complaint clauses) and turns a leading past
    tense into the base form; it never adds content that was not in the feedback.
    """
    text = re.sub(r"\s+", " ", text.replace("\u2019", "'")).strip()
    clauses = [c for c in _SENTENCE_SPLIT.split(text) if c.strip()]
    kept: list[str] = []
    described: list[str] = []
    for clause in clauses:
        mistake = _described_mistake(clause)
        if mistake:
            described.append(mistake)
            continue
        imperative = _clause_to_imperative(clause)
        if imperative and _has_content(imperative) and not _clause_is_chatter(clause):
            kept.append(imperative.rstrip(".!?;, "))
        if len(kept) == 2:
            break
    kept = kept or described[:1]
    if not kept:
        return ""
    joined = "; ".join(kept[:1] + [k[0].lower() + k[1:] for k in kept[1:]])
    tokens = joined.split()
    if len(tokens) > max_words:
        cut = " ".join(tokens[:max_words])
        comma = cut.rfind(",")
        if comma > 0 and len(cut[:comma].split()) >= max_words // 3:
            joined = cut[:comma]
        else:
            joined = cut.rstrip(",;:") + "\u2026"
    return joined[0].upper() + joined[1:] + ("" if joined.endswith("\u2026") else ".")


def rule_key(text: str) -> str:
    """A normalised key for a rule's id: its stemmed content words in order."""
    tokens = content_tokens(text)
    deduped = [t for i, t in enumerate(tokens) if i == 0 or tokens[i - 1] != t]
    return " ".join(deduped) or text.strip().lower()


@dataclass(frozen=True, slots=True)
class RuleShape:
    """What a rule asks for: things to do, things to avoid, exclusive values it picks."""

    positive: frozenset[str]
    negative: frozenset[str]
    choices: tuple[tuple[str, frozenset[str]], ...]
    rest: frozenset[str]


def _meaningful(text: str) -> frozenset[str]:
    return frozenset(t for t in content_tokens(text) if t not in GENERIC and t != "not")


@lru_cache(maxsize=16_384)
def rule_shape(text: str) -> RuleShape:
    """Parse ``text`` clause by clause into things to do and to avoid ("use A, not B")."""
    positive: set[str] = set()
    negative: set[str] = set()
    for clause in _CLAUSE_SPLIT.split(text.strip().rstrip(".")):
        if not clause or not clause.strip():
            continue
        match = _PAIR.match(clause.strip())
        if match and _meaningful(match.group("a")) and _meaningful(match.group("b")):
            pos, neg = _meaningful(match.group("a")), _meaningful(match.group("b"))
            if _negated(match.group("a")):
                pos, neg = neg, pos
            positive |= pos
            negative |= neg
        else:
            excess = _meaningful(" ".join(_TOO_RE.findall(clause)))  # "too long": wants short
            target = negative if _negated(clause) else positive
            target |= _meaningful(clause) - excess
            negative |= excess
    choices: list[tuple[str, frozenset[str]]] = []
    for name, values in sorted(_EXCLUSIVE.items()):
        found = positive & values
        if found:
            choices.append((name, frozenset(found)))
    versions = frozenset(t for t in positive if _VERSION_RE.match(t))
    if versions:
        choices.append(("version", versions))
    chosen: set[str] = set()
    for _, values in choices:
        chosen |= values
    return RuleShape(
        frozenset(positive), frozenset(negative), tuple(choices), frozenset(positive - chosen)
    )


def choice_values(name: str) -> frozenset[str]:
    """Every value of the exclusive choice ``name`` ("currency": euro, dollar, …), stemmed."""
    return _EXCLUSIVE.get(name, frozenset())


def exclusive_values(text: str) -> dict[str, frozenset[str]]:
    """The values of exclusive choices ``text`` mentions at all, by kind ("currency": {"euro"})."""
    tokens = frozenset(content_tokens(text))
    found = {name: tokens & values for name, values in _EXCLUSIVE.items()}
    return {name: values for name, values in found.items() if values}


def _negated(clause: str) -> bool:
    tokens = words(clause)
    return "not" in tokens or "without" in tokens or bool(_RETIRED_THING.search(clause))


def _overlap(a: frozenset[str], b: frozenset[str]) -> float:
    if not a or not b:
        return 0.0
    return len(a & b) / len(a | b)


@lru_cache(maxsize=65_536)  # clustering asks it for every similar pair, every trigger
def contradiction(new: str, old: str) -> str | None:
    """Why rule ``new`` contradicts rule ``old`` ("negation", "reversed_preference",
    "exclusive_choice:<kind>"), or None when they can both hold."""
    a, b = rule_shape(new), rule_shape(old)
    a_pos_b_neg = _overlap(a.positive, b.negative) >= 0.5 or bool(
        a.positive & b.negative & _versions_and_choices(a, b)
    )
    a_neg_b_pos = _overlap(a.negative, b.positive) >= 0.5 or bool(
        a.negative & b.positive & _versions_and_choices(a, b)
    )
    if a_pos_b_neg or a_neg_b_pos:
        both_pairs = a.positive and a.negative and b.positive and b.negative
        return "reversed_preference" if both_pairs else "negation"
    if a.positive and b.positive:
        for name, values in a.choices:
            other = dict(b.choices).get(name)
            if other is None or other & values:
                continue
            # a bare choice ("Euros.", "Use pnpm now.") is about the whole dimension
            a_rest, b_rest = a.rest - FRAME_WORDS, b.rest - FRAME_WORDS
            same_subject = not a_rest or not b_rest or _overlap(a_rest, b_rest) >= 0.5
            if same_subject:
                return f"exclusive_choice:{name}"
    return None


def _versions_and_choices(a: RuleShape, b: RuleShape) -> frozenset[str]:
    """Tokens that decide a rule on their own (versions, exclusive values)."""
    out: set[str] = set()
    for shape in (a, b):
        for _, values in shape.choices:
            out |= values
        out |= {t for t in shape.positive | shape.negative if _VERSION_RE.match(t)}
    return frozenset(out)
