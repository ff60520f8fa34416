"""BLEU-1..4, ROUGE-L and CIDEr-D with the COCO caption toolkit's definitions (pure Python, no torch).

The definitions are those of `pycocoevalcap` (the COCO caption evaluation
code): BLEU with clipped n-gram counts and the "closest" reference length
for the brevity penalty, corpus BLEU from the summed counts and per-image
BLEU from each image's own counts (with the toolkit's 1e-9 / 1e-15
smoothing); ROUGE-L as the LCS F-measure with beta 1.2 against the best
reference; CIDEr-D with tf-idf n-gram vectors (n = 1..4), document
frequencies over the references of the evaluated images, clipped
candidate counts, a Gaussian length penalty (sigma 6), averaged over the
references and multiplied by 10. tests/test_caption_eval.py checks equality
with `pycocoevalcap`'s scorers on fixed examples (to 1e-9).

Tokenisation: the toolkit runs the Stanford PTB tokenizer (Java) first; it
is not used here. `tokenize` lower-cases, splits words from punctuation
(`\\w+` runs and single other characters) and drops the punctuation the PTB
step drops (. , ? ! : ; - ' " ` ( ) ...), so plain captions get the same
tokens; contractions differ ("don't" -> "don t", PTB: "do n't").

Several predictions per image: each is scored against the image's
references with the corpus statistics of the images (CIDEr-D's document
frequencies count each image's references once); corpus BLEU counts every
prediction, and the corpus ROUGE-L and CIDEr-D are means over predictions.
"""

from __future__ import annotations

import math
import re
from collections import Counter

METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider")
METRIC_NAMES = {
    "bleu1": "BLEU-1",
    "bleu2": "BLEU-2",
    "bleu3": "BLEU-3",
    "bleu4": "BLEU-4",
    "rouge_l": "ROUGE-L",
    "cider": "CIDEr-D",
}
_PUNCTUATION = set("'\"`.,?!:;-()[]{}") | {"...", "--"}
_TOKEN = re.compile(r"\w+|[^\w\s]")


def tokenize(text: str) -> str:
    """A caption as space-separated lower-case tokens, punctuation dropped (see the module docstring)."""
    return " ".join(t for t in _TOKEN.findall(text.lower()) if t not in _PUNCTUATION)


def _ngrams(words: list[str], n: int = 4) -> Counter:
    return Counter(tuple(words[i : i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


# --- BLEU ---------------------------------------------------------------------------------------------------


def _bleu_counts(test: str, refs: list[str], n: int = 4) -> dict:
    words = test.split()
    ref_lengths, max_counts = [], Counter()
    for ref in refs:
        ref_words = ref.split()
        ref_lengths.append(len(ref_words))
        for gram, count in _ngrams(ref_words, n).items():
            max_counts[gram] = max(max_counts[gram], count)
    length = len(words)
    correct = [0] * n
    for gram, count in _ngrams(words, n).items():
        correct[len(gram) - 1] += min(max_counts.get(gram, 0), count)
    return {
        "testlen": length,
        "reflen": min((abs(r - length), r) for r in ref_lengths)[1],  # the closest reference length
        "guess": [max(0, length - k + 1) for k in range(1, n + 1)],
        "correct": correct,
    }


def _bleu_from(correct, guess, testlen, reflen, n: int = 4) -> list[float]:
    small, tiny = 1e-9, 1e-15
    scores, product = [], 1.0
    for k in range(n):
        product *= (float(correct[k]) + tiny) / (float(guess[k]) + small)
        scores.append(product ** (1.0 / (k + 1)))
    ratio = (testlen + tiny) / (reflen + small)
    if ratio < 1:
        scores = [s * math.exp(1 - 1 / ratio) for s in scores]
    return scores


def bleu(pairs: list[tuple[str, list[str]]], n: int = 4) -> tuple[list[float], list[list[float]]]:
    """Corpus BLEU-1..n and per-pair BLEU-1..n of tokenised (prediction, references) pairs."""
    counts = [_bleu_counts(test, refs, n) for test, refs in pairs]
    each = [_bleu_from(c["correct"], c["guess"], c["testlen"], c["reflen"], n) for c in counts]
    total = _bleu_from(
        [sum(c["correct"][k] for c in counts) for k in range(n)],
        [sum(c["guess"][k] for c in counts) for k in range(n)],
        sum(c["testlen"] for c in counts),
        sum(c["reflen"] for c in counts),
        n,
    )
    return total, each


# --- ROUGE-L ------------------------------------------------------------------------------------------------


def _lcs(a: list[str], b: list[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(test: str, refs: list[str], beta: float = 1.2) -> float:
    """ROUGE-L F-measure of a tokenised prediction against its best-matching references (max precision,
    max recall over references)."""
    words = test.split(" ")
    precision, recall = [], []
    for ref in refs:
        ref_words = ref.split(" ")
        lcs = _lcs(ref_words, words)
        precision.append(lcs / float(len(words)))
        recall.append(lcs / float(len(ref_words)))
    p, r = max(precision), max(recall)
    if p == 0 or r == 0:
        return 0.0
    return ((1 + beta**2) * p * r) / float(r + beta**2 * p)


# --- CIDEr-D ------------------------------------------------------------------------------------------------


class CiderD:
    """CIDEr-D with document frequencies over the references of a set of images."""

    def __init__(self, references: list[list[str]], n: int = 4, sigma: float = 6.0):
        self.n, self.sigma = n, sigma
        self.frequency = Counter()
        for refs in references:
            self.frequency.update({gram for ref in refs for gram in _ngrams(ref.split(), n)})
        self.log_images = math.log(float(len(references)))

    def _vector(self, counts: Counter):
        vectors = [{} for _ in range(self.n)]
        norms = [0.0] * self.n
        length = 0
        for gram, tf in counts.items():
            k = len(gram) - 1
            value = float(tf) * (self.log_images - math.log(max(1.0, self.frequency[gram])))
            vectors[k][gram] = value
            norms[k] += value**2
            if k == 1:  # the toolkit counts the bigrams as the length (kept for equal scores)
                length += tf
        return vectors, [math.sqrt(x) for x in norms], length

    def score(self, test: str, refs: list[str]) -> float:
        vec, norm, length = self._vector(_ngrams(test.split(), self.n))
        total = [0.0] * self.n
        for ref in refs:
            vec_ref, norm_ref, length_ref = self._vector(_ngrams(ref.split(), self.n))
            delta = float(length - length_ref)
            for k in range(self.n):
                value = sum(min(v, vec_ref[k].get(g, 0.0)) * vec_ref[k].get(g, 0.0) for g, v in vec[k].items())
                if norm[k] != 0 and norm_ref[k] != 0:
                    value /= norm[k] * norm_ref[k]
                total[k] += value * math.e ** (-(delta**2) / (2 * self.sigma**2))
        return sum(total) / self.n / len(refs) * 10.0


# --- all of them ----------------------------------------------------------------------------------------------


def score_captions(predictions: list[list[str]], references: list[list[str]]) -> tuple[dict, list[list[dict]]]:
    """Corpus and per-prediction metrics of images' predictions against their references.

    Args:
        predictions: per image, one or more predicted captions (raw text).
        references: per image, one or more reference captions (raw text).

    Returns:
        (corpus {metric: value}, per image a list of {metric: value}, one per prediction).
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} prediction lists for {len(references)} reference lists")
    if not predictions:
        raise ValueError("no image has both a prediction and a reference")
    refs = [[tokenize(r) for r in rs] for rs in references]
    preds = [[tokenize(p) for p in ps] for ps in predictions]
    if any(not rs for rs in refs) or any(not ps for ps in preds):
        raise ValueError("every image needs at least one prediction and one reference")
    pairs = [(p, rs) for ps, rs in zip(preds, refs) for p in ps]
    corpus_bleu, each_bleu = bleu(pairs)
    cider = CiderD(refs)
    rows, flat, i = [], [], 0
    for ps, rs in zip(preds, refs):
        image = []
        for p in ps:
            row = {f"bleu{k + 1}": each_bleu[i][k] for k in range(4)}
            row["rouge_l"] = rouge_l(p, rs)
            row["cider"] = cider.score(p, rs)
            image.append(row)
            flat.append(row)
            i += 1
        rows.append(image)
    corpus = {f"bleu{k + 1}": corpus_bleu[k] for k in range(4)}
    corpus["rouge_l"] = sum(r["rouge_l"] for r in flat) / len(flat)
    corpus["cider"] = sum(r["cider"] for r in flat) / len(flat)
    return corpus, rows
