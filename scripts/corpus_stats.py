"""Statistics of the embedded corpus, as stated in kd_helpers/data/reviews/README.md.

Usage: python scripts/corpus_stats.py   (tests/test_corpus.py checks the datasheet against these numbers)
"""

from __future__ import annotations

import csv
import re
import statistics
from pathlib import Path

FOLDER = Path(__file__).resolve().parents[1] / "kd_helpers" / "data" / "reviews"
# Words and phrases that mark negation, contrast or hedging: a transparent, approximate "hard case" test.
HARD = re.compile(
    r"\b(not|no|never|nothing|nobody|none|neither|nor|hardly|barely|scarcely|without|but|though|although|"
    r"yet|however|despite|still|even|except|almost|nearly|quite|somewhat|rather|fairly|if only|instead|"
    r"than|only)\b|n't\b"
)


def load(split: str) -> list[tuple[str, int]]:
    with open(FOLDER / f"{split}.csv", newline="", encoding="utf-8") as fh:
        return [(row["text"], int(row["label"])) for row in csv.DictReader(fh)]


def stats(rows: list[tuple[str, int]]) -> dict:
    words = [len(text.split()) for text, _ in rows]
    tokens = [text.split() for text, _ in rows]
    bigrams = [tuple(t[i : i + 2]) for t in tokens for i in range(len(t) - 1)]
    return {
        "rows": len(rows),
        "positive_share": sum(label for _, label in rows) / len(rows),
        "min_words": min(words),
        "median_words": statistics.median(words),
        "max_words": max(words),
        "mean_words": statistics.mean(words),
        "vocabulary": len({w.strip(".,;:!?\"'()-") for t in tokens for w in t} - {""}),
        "distinct_bigram_ratio": len(set(bigrams)) / len(bigrams),
        "hard_share": sum(bool(HARD.search(text)) for text, _ in rows) / len(rows),
        "long_share": sum(n >= 25 for n in words) / len(rows),
    }


if __name__ == "__main__":
    splits = {name: load(name) for name in ("train", "validation", "test")}
    splits["all"] = splits["train"] + splits["validation"] + splits["test"]
    for name, rows in splits.items():
        s = stats(rows)
        print(f"{name:10s} " + "  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in s.items()))
