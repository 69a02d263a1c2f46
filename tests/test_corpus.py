"""The embedded review corpus: size, labels, balance, no duplicates or leakage, and the datasheet's numbers."""

import csv
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from corpus_stats import FOLDER, load, stats  # noqa: E402

from kd_helpers.data import corpus_dir  # noqa: E402


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9 ]+", " ", text.lower()).split())


@pytest.fixture(scope="module")
def splits():
    return {name: load(name) for name in ("train", "validation", "test")}


def test_installed_with_the_package():
    assert corpus_dir().resolve() == FOLDER.resolve()
    for name in ("train.csv", "validation.csv", "test.csv", "README.md"):
        assert (corpus_dir() / name).is_file()


def test_header_and_encoding():
    for name in ("train.csv", "validation.csv", "test.csv"):
        raw = (FOLDER / name).read_bytes()
        raw.decode("utf-8")
        with open(FOLDER / name, newline="", encoding="utf-8") as fh:
            assert next(csv.reader(fh)) == ["text", "label"]


def test_sizes_labels_text(splits):
    assert len(splits["train"]) >= 2400
    assert len(splits["validation"]) >= 600
    assert len(splits["test"]) >= 600
    for rows in splits.values():
        assert {label for _, label in rows} == {0, 1}
        assert all(text.strip() and text == text.lower() for text, _ in rows)
        assert all(2 <= len(text.split()) <= 60 for text, _ in rows)


def test_test_split_has_long_reviews(splits):
    """Real reviews run long: at least 10 % of the test rows have 25 words or more."""
    assert stats(splits["test"])["long_share"] >= 0.10


def test_balance(splits):
    for rows in splits.values():
        share = sum(label for _, label in rows) / len(rows)
        assert 0.45 <= share <= 0.55


def test_no_duplicates_or_leakage(splits):
    seen = {}
    for name, rows in splits.items():
        keys = [normalise(text) for text, _ in rows]
        assert len(keys) == len(set(keys)), f"normalised duplicates inside {name}"
        seen[name] = set(keys)
    assert not seen["train"] & seen["validation"], "validation rows leak into train"
    assert not seen["test"] & (seen["train"] | seen["validation"]), "test rows leak into train or validation"


def test_variety_and_difficulty(splits):
    s = stats(splits["train"] + splits["validation"] + splits["test"])
    assert s["vocabulary"] >= 3000
    assert s["distinct_bigram_ratio"] >= 0.5  # slot-filled templates score far lower
    assert s["hard_share"] >= 0.20
    assert 8 <= s["median_words"] <= 20


def test_datasheet_states_the_measured_numbers(splits):
    """Every number in the datasheet's statistics table is the one computed from the files."""
    sheet = (FOLDER / "README.md").read_text(encoding="utf-8")
    for name, rows in splits.items():
        s = stats(rows)
        for key, value in s.items():
            match = re.search(rf"^\| {name} \| {key} \| ([0-9.]+) \|", sheet, re.M)
            assert match, f"datasheet lacks the row '| {name} | {key} | ... |'"
            stated = float(match.group(1))
            assert stated == pytest.approx(value, abs=0.0015 if isinstance(value, float) else 0), (name, key)
