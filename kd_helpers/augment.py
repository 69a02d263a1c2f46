"""A transfer set: seeded variants of the training sentences for the teacher to label (Tang et al., 2019).

The student learns most from a teacher when the teacher labels *more* text than the labelled set holds.
Each variant applies, word by word, masking (a word becomes the tokenizer's ``[MASK]``) or dropping, and
sometimes keeps only an n-gram of the sentence (1 to 5 words). The variants carry no label: only the
teacher's logits on them are used. A synonym / same-part-of-speech swap (also in Tang et al.) is left out:
no well-kept library does it offline without a separate data download (NLTK's WordNet needs one).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Sequence

from datasets import Dataset

MASK = "[MASK]"  # BERT-family tokenizers turn this text into their mask token
P_MASK, P_DROP, P_NGRAM, MAX_NGRAM = 0.1, 0.1, 0.25, 5


def normalise(text: str) -> str:
    """Lower case, letters/digits/apostrophes only, single spaces (the corpus's duplicate key)."""
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split())


def variant(words: Sequence[str], rng: random.Random, mask: str = MASK) -> str:
    """One augmented copy of a sentence given as a list of words."""
    out = []
    for word in words:
        roll = rng.random()
        if roll < P_MASK:
            out.append(mask)
        elif roll < P_MASK + P_DROP:
            continue
        else:
            out.append(word)
    if rng.random() < P_NGRAM and len(out) > 1:
        n = rng.randint(1, min(MAX_NGRAM, len(out)))
        start = rng.randrange(len(out) - n + 1)
        out = out[start:start + n]
    return " ".join(out)


def augment(texts: Sequence[str], n_variants: int, seed: int = 0, exclude: Iterable[str] = (),
            mask: str = MASK, max_tries: int = 20) -> Dataset:
    """``n_variants`` distinct variants per sentence: a ``Dataset`` with ``text`` and ``source`` (row of ``texts``).

    Deterministic for a given ``seed``. A variant is rejected when, after :func:`normalise`, it equals any
    sentence of ``texts``, any of ``exclude`` (pass the validation and test sentences: a variant must never
    leak one), an earlier variant, or is empty or only masks. A sentence that cannot give ``n_variants``
    distinct variants in ``max_tries * n_variants`` draws gives fewer.
    """
    rng = random.Random(seed)
    seen = {normalise(t) for t in texts} | {normalise(t) for t in exclude}
    mask_key = normalise(mask)
    rows, sources = [], []
    for row, text in enumerate(texts):
        words, made = text.split(), 0
        for _ in range(max_tries * n_variants):
            if made == n_variants:
                break
            candidate = variant(words, rng, mask)
            key = normalise(candidate)
            if not key.replace(mask_key, "").strip() or key in seen:
                continue
            seen.add(key)
            rows.append(candidate)
            sources.append(row)
            made += 1
    return Dataset.from_dict({"text": rows, "source": sources})
