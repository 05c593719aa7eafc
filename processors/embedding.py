"""Text embeddings behind one interface, with an offline default that needs no download.

Clustering explanations and merging near-duplicate memory items only need "are
these two short feedback sentences about the same thing?". :class:`HashingEmbedder`
answers that without a model: feature hashing (blake2b, so identical on every
machine and run) of normalised word unigrams and bigrams, lightly stemmed, with a
small synonym table for words feedback uses interchangeably, plus character
trigrams for spelling and morphology. Dense models (sentence-transformers, an
OpenAI-compatible endpoint) implement the same :class:`Embedder` protocol in
``learnloop/embeddings``; the settings choose one (``embedder.kind``).
"""

from __future__ import annotations

import itertools
import math
import operator
import re
import unicodedata
from collections.abc import Sequence
from functools import lru_cache
from hashlib import blake2b
from typing import Final, Protocol


class Embedder(Protocol):
    """Turns texts into unit-length vectors whose dot product is their similarity.

    Implementations: :class:`HashingEmbedder` here (offline default); a local
    sentence-transformers model and an OpenAI-compatible endpoint in
    ``learnloop/embeddings`` (they may do I/O, so they say ``blocking = True``).
    """

    @property
    def dim(self) -> int: ...

    @property
    def name(self) -> str: ...

    def embed(self, texts: Sequence[str]) -> list[list[float]]: ...


def _wordlist(text: str) -> list[str]:
    """Words of a whitespace-separated literal (keeps long word lists readable)."""
    return text.split()


STOPWORDS: Final[frozenset[str]] = frozenset(
    _wordlist(
        """
        a an the to of in on at by for with from into onto about as and or but if then so than
        is are was were be been being am it its it's this that these those there here i i'm
        i've me my we our us you you're your yours he she they them their his her do does did
        done doing have has had having will would shall should could can may might must please
        pls plz just really very quite also too again ok okay thanks thank hey oh yeah well
        all any some such what which who whom how when where why up out over always instead
        rather like one ones thing things way
        """
    )
)

# Words feedback uses interchangeably, mapped to one spelling before stemming. Kept short
# and generic (verbs of answering, negation, size, age); see benchmarks/embedding_quality.py.
SYNONYMS: Final[dict[str, str]] = {
    "reply": "answer",
    "replies": "answer",
    "replied": "answer",
    "respond": "answer",
    "responds": "answer",
    "responded": "answer",
    "deutsch": "german",
    "utilize": "use",
    "utilise": "use",
    "employ": "use",
    "don't": "not",
    "dont": "not",
    "doesn't": "not",
    "didn't": "not",
    "isn't": "not",
    "aren't": "not",
    "shouldn't": "not",
    "can't": "not",
    "cannot": "not",
    "won't": "not",
    "never": "not",
    "avoid": "not",
    "stop": "not",
    "no": "not",
    "brief": "short",
    "briefer": "short",
    "concise": "short",
    "shorter": "short",
    "terse": "short",
    "succinct": "short",
    "lengthy": "long",
    "verbose": "long",
    "wordy": "long",
    "longer": "long",
    "incorrect": "wrong",
    "deprecated": "old",
    "obsolete": "old",
    "outdated": "old",
    "legacy": "old",
    "older": "old",
    "latest": "new",
    "newer": "new",
    "newest": "new",
    "current": "new",
    "delete": "remove",
    "drop": "remove",
    "omit": "remove",
    "include": "add",
    "insert": "add",
    "display": "show",
    "print": "show",
    "verify": "check",
    "validate": "check",
    "confirm": "check",
    "documentation": "docs",
    "doc": "docs",
    "sample": "example",
    "method": "function",
    "lib": "library",
    "package": "library",
    "snippet": "code",
    "repository": "repo",
    "db": "database",
    "configuration": "config",
    "settings": "config",
    "k8s": "kubernetes",
    "url": "link",
    "quick": "fast",
    "error": "fail",
    "errors": "fail",
    "failure": "fail",
    "failed": "fail",
    "fails": "fail",
}

_TOKEN_RE: Final = re.compile(r"[a-z0-9]+(?:['._][a-z0-9]+)*")
_SUFFIXES: Final[tuple[tuple[str, str], ...]] = (
    ("ational", "ate"),
    ("ization", "ize"),
    ("isation", "ize"),
    ("ations", "ate"),
    ("ation", "ate"),
    ("fulness", "ful"),
    ("iveness", "ive"),
    ("ments", ""),
    ("ment", ""),
    ("ness", ""),
    ("ingly", ""),
    ("edly", ""),
    ("ings", ""),
    ("ing", ""),
    ("ies", "y"),
    ("ied", "y"),
    ("ed", ""),
    ("es", ""),
    ("ly", ""),
    ("s", ""),
)
_VOWELS: Final = frozenset("aeiouy")


def stem(word: str) -> str:
    """Strip one common English suffix so "deprecated"/"deprecation" and "uses"/"using" meet."""
    if len(word) <= 3 or not word.isalpha():
        return word
    return _stem_word(word)


@lru_cache(maxsize=16_384)
def _stem_word(word: str) -> str:
    """:func:`stem` of an alphabetic word, cached: most words recur (a context request
    embeds its query on the request path). Numbers and ids, often new, are not cached,
    so they do not churn the cache (each new entry is an object the collector tracks)."""
    for suffix, replacement in _SUFFIXES:
        if word.endswith(suffix) and not (
            suffix == "s" and word.endswith(("ss", "us", "sis", "xis"))
        ):
            base = word[: len(word) - len(suffix)] + replacement
            if len(base) == 2 and suffix in ("ed", "ing") and base[-1] not in _VOWELS:
                base += "e"  # used/using -> use
            if len(base) < 3 and not (suffix == "s" and len(base) == 2):
                continue
            if suffix in ("ed", "ing", "ings", "edly", "ingly") and not _VOWELS & set(base):
                continue
            word = base
            if len(word) > 3 and word[-1] == word[-2] and word[-1] not in "lsz":
                word = word[:-1]  # stopped -> stopp -> stop
            break
    if len(word) > 3 and word.endswith("e"):
        word = word[:-1]  # use/using/used all become "us"
    return word


# Frame words of feedback ("use X", "answer in Y") say little about *what* is meant, so
# they weigh less than the words naming the thing (a fixed stand-in for IDF weights).
GENERIC: Final[frozenset[str]] = frozenset(
    stem(w)
    for w in _wordlist(
        """
        use answer add show give make need set put keep format call check want get try
        prefer not wrong new old good bad better right correct next time first more less
        """
    )
)


def normalise(text: str) -> str:
    """Lower-case NFKC text with typographic quotes made plain."""
    text = unicodedata.normalize("NFKC", text).lower()
    return text.replace("\u2019", "'").replace("\u2018", "'").replace("`", " ")


def words(text: str, synonyms: bool = True) -> list[str]:
    """Normalised words before stopword removal (synonyms applied)."""
    out: list[str] = []
    for raw in _TOKEN_RE.findall(normalise(text)):
        token = raw[:-2] if raw.endswith("'s") else raw
        token = token.strip("._'")
        if not token:
            continue
        if synonyms:
            token = SYNONYMS.get(token, token)
        out.append(token)
    return out


def content_tokens(text: str, synonyms: bool = True) -> list[str]:
    """Stemmed, stopword-free tokens in order: the words that carry a sentence's meaning."""
    return [stem(w) for w in words(text, synonyms) if w not in STOPWORDS]


@lru_cache(maxsize=65_536)
def _slot(feature: str, dim: int) -> tuple[int, float]:
    digest = int.from_bytes(blake2b(feature.encode("utf-8"), digest_size=8).digest(), "big")
    return digest % dim, 1.0 if digest >> 63 else -1.0


class HashingEmbedder:
    """Deterministic bag-of-features embedding; the offline default, no model needed."""

    def __init__(
        self,
        dim: int = 384,
        *,
        synonyms: bool = True,
        char_ngrams: bool = True,
        bigram_weight: float = 0.7,
        char_weight: float = 0.35,
        generic_weight: float = 0.5,
    ) -> None:
        if dim < 16:
            raise ValueError("dim must be at least 16")
        self.dim = dim
        self.synonyms = synonyms
        self.char_ngrams = char_ngrams
        self.bigram_weight = bigram_weight
        self.char_weight = char_weight
        self.generic_weight = generic_weight
        flags = ("s" if synonyms else "") + ("c" if char_ngrams else "")
        self.name = f"hashing-v1-{dim}{'-' + flags if flags != 'sc' else ''}"
        self._cached = lru_cache(maxsize=8192)(self._embed_one)

    def features(self, text: str) -> dict[str, float]:
        """Weighted features of one text (exposed for explanation and tests)."""
        tokens = content_tokens(text, self.synonyms)
        feats: dict[str, float] = {}
        for token in tokens:
            weight = self.generic_weight if token in GENERIC else 1.0
            feats["w:" + token] = feats.get("w:" + token, 0.0) + weight
        for left, right in itertools.pairwise(tokens):
            key = f"b:{left} {right}"
            feats[key] = feats.get(key, 0.0) + self.bigram_weight
        if self.char_ngrams:
            for token in tokens:
                padded = f"#{token}#"
                grams = [padded[i : i + 3] for i in range(len(padded) - 2)]
                share = self.char_weight / math.sqrt(len(grams))
                for gram in grams:
                    feats["c:" + gram] = feats.get("c:" + gram, 0.0) + share
        # sublinear term frequency: repeating a word ten times is not ten times the meaning
        return {k: (1.0 + math.log(v)) if v > 1.0 else v for k, v in feats.items()}

    def _embed_one(self, text: str) -> tuple[float, ...]:
        # Sparse: a text touches a few dozen of the dim slots. Each slot adds its
        # features in the same (sorted) order, and the norm sums the squares in slot
        # order; the skipped zeros add exactly 0.0, so the floats are bit-identical to
        # summing the dense vector (tested); a query embeds in ~45 us instead of ~80.
        slots: dict[int, float] = {}
        for feature, weight in sorted(self.features(text).items()):
            index, sign = _slot(feature, self.dim)
            slots[index] = slots.get(index, 0.0) + sign * weight
        touched = sorted(slots.items())
        norm = math.sqrt(sum(x * x for _, x in touched))
        vector = [0.0] * self.dim
        for index, x in touched:
            vector[index] = x / norm if norm != 0.0 else x
        return tuple(vector)

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Unit-length vectors (all zeros for a text with no content words)."""
        return [list(self._cached(text)) for text in texts]


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine similarity; 0.0 when either vector is zero."""
    if len(a) != len(b):
        raise ValueError(f"vectors of different lengths: {len(a)} and {len(b)}")
    # map(mul) is the same products summed in the same order as a generator, ~3x faster
    dot: float = sum(map(operator.mul, a, b))
    na = math.sqrt(sum(map(operator.mul, a, a)))
    nb = math.sqrt(sum(map(operator.mul, b, b)))
    if na == 0.0 or nb == 0.0:
        return 0.0
    return dot / (na * nb)


def cosine_matrix(vectors: Sequence[Sequence[float]]) -> list[list[float]]:
    """``[[cosine(u, v) for v in vectors] for u in vectors]``, bit for bit, much faster.

    Hashed vectors have a few dozen non-zeros in hundreds of dimensions, and a zero
    product adds nothing to a float sum, so summing only the products of shared
    non-zeros, in ascending index order, gives exactly the same floats. Each pair
    is computed once (the matrix is symmetric). Clustering a synthesis trigger's
    evidence is n² cosines: this was the memory stage's largest cost in the
    throughput profile.
    """
    if len({len(v) for v in vectors}) > 1:
        raise ValueError("vectors of different lengths")
    sparse = [[(i, x) for i, x in enumerate(v) if x] for v in vectors]
    lookup = [dict(nz) for nz in sparse]
    norms = [math.sqrt(sum(x * x for _, x in nz)) for nz in sparse]
    n = len(vectors)
    sims = [[0.0] * n for _ in range(n)]
    for i in range(n):
        if norms[i] == 0.0:
            continue
        for j in range(i, n):
            if norms[j] == 0.0:
                continue
            other = lookup[j]
            dot = sum(x * other[k] for k, x in sparse[i] if k in other)
            sims[i][j] = sims[j][i] = dot / (norms[i] * norms[j])
    return sims
