"""Merge hand-written review batches into the embedded corpus: normalise, deduplicate, split, write.

Usage: python scripts/build_corpus.py BATCH.csv [BATCH.csv ...]
Writes kd_helpers/data/reviews/train.csv and validation.csv (80/20, stratified by label, seeded).

       python scripts/build_corpus.py --test BATCH.csv [BATCH.csv ...]
Writes kd_helpers/data/reviews/test.csv from batches written later, for the test split alone: a row whose
normalised text is already in train.csv or validation.csv (or earlier in the batches) is dropped.
"""

from __future__ import annotations

import csv
import random
import re
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "kd_helpers" / "data" / "reviews"


def normalise(text: str) -> str:
    """Lower case, letters/digits/apostrophes only, single spaces: the key for duplicate detection."""
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split())


def read_split(name: str) -> list[tuple[str, int]]:
    with open(OUT / f"{name}.csv", newline="", encoding="utf-8") as fh:
        return [(r["text"], int(r["label"])) for r in csv.DictReader(fh)]


def read_batches(paths: list[str], seen: set) -> tuple[list[tuple[str, int]], int]:
    """New rows of the batches (normalised text not in ``seen``, label 0/1), and how many were dropped."""
    rows, dropped = [], 0
    for path in paths:
        with open(path, newline="", encoding="utf-8") as fh:
            for record in csv.DictReader(fh):
                text = " ".join(record["text"].strip().lower().split())
                key = normalise(text)
                if not key or key in seen or record["label"] not in {"0", "1"}:
                    dropped += 1
                    continue
                seen.add(key)
                rows.append((text, int(record["label"])))
    return rows, dropped


def build_test(paths: list[str]) -> None:
    seen = {normalise(text) for name in ("train", "validation") for text, _ in read_split(name)}
    rows, dropped = read_batches(paths, seen)
    random.Random(17).shuffle(rows)
    with open(OUT / "test.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    print(f"{len(rows)} test rows ({dropped} dropped as duplicates or bad labels)")


def main(paths: list[str]) -> None:
    if paths and paths[0] == "--test":
        return build_test(paths[1:])
    rows, _ = read_batches(paths, set())
    rng = random.Random(13)
    train, validation = [], []
    for label in (0, 1):
        group = [row for row in rows if row[1] == label]
        rng.shuffle(group)
        cut = round(0.2 * len(group))
        validation += group[:cut]
        train += group[cut:]
    rng.shuffle(train)
    rng.shuffle(validation)
    OUT.mkdir(parents=True, exist_ok=True)
    for name, split in (("train", train), ("validation", validation)):
        with open(OUT / f"{name}.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["text", "label"])
            writer.writerows(split)
    print(f"{len(rows)} unique rows -> train {len(train)}, validation {len(validation)}")


if __name__ == "__main__":
    main(sys.argv[1:])
