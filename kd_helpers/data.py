"""Data: the embedded review corpus, local CSV/TSV/JSON Lines files or GLUE SST-2, tokenised for training.

Local files are parsed once, with the ``csv`` / ``json`` modules, and checked row by row; the ``Dataset`` is
built from the checked rows. A bad file gives one clear line (file, row, column, value), never a traceback.
"""

from __future__ import annotations

import csv
import io
import json
import os
from importlib import resources
from pathlib import Path

import torch
from datasets import Dataset, DatasetDict, load_dataset
from datasets.utils.logging import disable_progress_bar
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from kd_helpers.errors import KDError

SST2_DATASET = "nyu-mll/glue"  # GLUE on the Hugging Face Hub; KD_SST2_DATASET may point to a local copy
TEXT_COLUMNS = ("text", "sentence")
disable_progress_bar()  # tokenising a few thousand rows takes under a second; its bars only clutter notebooks
FORMATS = {".csv": "csv", ".tsv": "csv", ".jsonl": "json", ".json": "json"}


def corpus_dir() -> Path:
    """The folder of the embedded movie-review corpus (installed with the package)."""
    return Path(str(resources.files("kd_helpers") / "data" / "reviews"))


def load_splits(data: str = "reviews", seed: int = 42, num_classes: int = 2) -> DatasetDict:
    """``train`` and ``validation`` splits (and ``test`` where there is one), columns ``text`` and ``label``.

    ``data`` is ``"reviews"`` (embedded corpus: train, validation, test), ``"sst2"`` (GLUE SST-2 from the Hub),
    a folder holding ``train.*`` and ``validation.*`` (and optionally ``test.*``) files, or one file (then
    20 % of it, seeded, becomes validation). Validation selects; only the test split reports final numbers.
    """
    if data == "reviews":
        folder = corpus_dir()
        return DatasetDict({split: load_table(folder / f"{split}.csv", num_classes)
                            for split in ("train", "validation", "test")})
    if data == "sst2":
        return load_sst2()
    path = Path(data).expanduser()
    if path.is_dir():
        found = {split: _find_split(path, split) for split in ("train", "validation")}
        if (test := _find_split(path, "test", required=False)) is not None:
            found["test"] = test
        return DatasetDict({split: load_table(file, num_classes) for split, file in found.items()})
    table = load_table(path, num_classes)
    if len(table) < 10:
        raise KDError(f"{path}: only {len(table)} rows; need at least 10 to split off a validation set")
    parts = table.train_test_split(test_size=0.2, seed=seed)
    return DatasetDict(train=parts["train"], validation=parts["test"])


def load_table(path: str | Path, num_classes: int = 2) -> Dataset:
    """Read one local CSV/TSV/JSON Lines (or JSON array) file into a ``Dataset`` with ``text`` and ``label``.

    The file is parsed once: every row is validated, then the ``Dataset`` is built from the validated rows.
    """
    path = Path(path).expanduser()
    kind = _check_file(path)
    texts, labels = _check_rows(path, kind, num_classes)
    return Dataset.from_dict({"text": texts, "label": labels}).cast_column("label", _int_feature())


def load_sst2() -> DatasetDict:
    """GLUE SST-2 (train / validation) from the Hub, or from ``KD_SST2_DATASET`` (a local copy)."""
    source = os.environ.get("KD_SST2_DATASET", SST2_DATASET)
    try:
        ds = load_dataset(source, "sst2")
    except Exception as exc:  # ConnectionError, OfflineModeIsEnabled, FileNotFoundError, DatasetNotFoundError...
        raise KDError(
            f"could not load GLUE SST-2 from {source!r} ({exc.__class__.__name__}): the Hugging Face Hub is "
            "unreachable or HF_HUB_OFFLINE=1; use the offline default --data reviews"
        ) from None
    return DatasetDict(
        train=ds["train"].select_columns(["sentence", "label"]).rename_column("sentence", "text"),
        validation=ds["validation"].select_columns(["sentence", "label"]).rename_column("sentence", "text"),
    )


def subsample(ds: Dataset, rows: int | None, seed: int) -> Dataset:
    """A seeded random subset of ``rows`` rows (all rows when ``rows`` is None or larger)."""
    if rows is None or rows >= len(ds):
        return ds
    return ds.shuffle(seed=seed).select(range(rows))


def tokenize(ds: Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int = 64) -> Dataset:
    """Token ids without padding (the collator pads each batch), plus ``labels`` and the row index ``idx``."""

    def encode(batch, indices):
        out = tokenizer(batch["text"], truncation=True, max_length=max_length)
        out["labels"] = batch["label"]
        out["idx"] = indices
        return out

    return ds.map(encode, batched=True, with_indices=True, remove_columns=ds.column_names,
                  desc="Tokenising", load_from_cache_file=False)


def make_loader(tokenized: Dataset, tokenizer: PreTrainedTokenizerBase, batch_size: int = 32,
                shuffle: bool = False, seed: int = 42, group_by_length: bool = False) -> DataLoader:
    """Batches padded to their own longest row (dynamic padding).

    - ``shuffle=False`` (inference: teacher passes, evaluation): rows sorted by length, so each batch pads
      little; callers place results back by each row's ``idx``.
    - ``shuffle=True``: a fresh random order every epoch; with ``group_by_length`` rows of similar length
      share a batch *within chunks* of :data:`CHUNK_BATCHES` batches, and the batches are shuffled
      (:class:`ChunkedLengthSampler`): most of the padding saving, none of the stalls of a global sort.
    """
    collator = DataCollatorWithPadding(tokenizer, return_tensors="pt")
    lengths = [len(ids) for ids in tokenized["input_ids"]]
    if not shuffle:
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        return DataLoader(tokenized, batch_sampler=batches, collate_fn=collator)
    chunk = CHUNK_BATCHES if group_by_length else 1
    sampler = ChunkedLengthSampler(lengths, batch_size, chunk_batches=chunk, seed=seed)
    return DataLoader(tokenized, batch_sampler=sampler, collate_fn=collator)


CHUNK_BATCHES = 8  # chosen by measurement: benchmarks/README.md, "Length grouping"


class ChunkedLengthSampler:
    """Shuffle, cut into chunks of ``chunk_batches`` batches, sort each chunk by length, shuffle the batches.

    ``chunk_batches=1`` is plain random batching. Each epoch (each ``iter``) draws a new order from a
    generator seeded once, so runs with the same seed see the same batches.
    """

    def __init__(self, lengths: list[int], batch_size: int, chunk_batches: int = CHUNK_BATCHES, seed: int = 42):
        self.lengths, self.batch_size, self.chunk_batches = list(lengths), batch_size, chunk_batches
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self):
        order = torch.randperm(len(self.lengths), generator=self.generator).tolist()
        size = self.batch_size * self.chunk_batches
        batches = []
        for start in range(0, len(order), size):
            chunk = order[start:start + size]
            if self.chunk_batches > 1:
                chunk.sort(key=lambda i: self.lengths[i])
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        if self.chunk_batches > 1:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=self.generator).tolist()]
        yield from batches


def fingerprint(ds: Dataset) -> str:
    """A content hash of a split (texts and labels), used in cache keys."""
    import hashlib

    digest = hashlib.sha256()
    for text, label in zip(ds["text"], ds["label"], strict=True):
        digest.update(f"{label}\t{text}\n".encode())
    return digest.hexdigest()[:16]


# --- checks -------------------------------------------------------------------------------------------


def _find_split(folder: Path, split: str, required: bool = True) -> Path | None:
    for suffix in FORMATS:
        candidate = folder / f"{split}{suffix}"
        if candidate.is_file():
            return candidate
    if not required:
        return None
    raise KDError(f"{folder}: no {split}.csv, {split}.tsv or {split}.jsonl in this folder")


def _check_file(path: Path) -> str:
    if not path.exists():
        raise KDError(f"{path}: file not found")
    if path.is_dir():
        raise KDError(f"{path}: is a folder; give a .csv, .tsv or .jsonl file")
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise KDError(f"{path}: unsupported file type {path.suffix!r}; use .csv, .tsv or .jsonl")
    raw = path.read_bytes()
    if not raw.strip():
        raise KDError(f"{path}: file is empty")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise KDError(f"{path}: line {line} is not valid UTF-8 (byte {raw[exc.start]:#04x})") from None
    return kind


def _check_rows(path: Path, kind: str, num_classes: int) -> tuple[list[str], list[int]]:
    """Validate every row; return ``(texts, labels)``. Row numbers are 1-based data rows (header excluded)."""
    text = path.read_text(encoding="utf-8-sig")
    if kind == "json" and text.lstrip().startswith("["):  # a JSON array of objects
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise KDError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); give a JSON array of "
                          "objects or JSON Lines (one object per line)") from None
        for rowno, record in enumerate(records, 1):
            if not isinstance(record, dict):
                raise KDError(f"{path}: item {rowno} of the JSON array is not an object")
        header = sorted({key for record in records for key in record})
    elif kind == "json":
        records = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise KDError(f"{path}: line {lineno} is not valid JSON ({exc.msg}); JSON files are read as JSON "
                              "Lines (one object per line) or as one JSON array of objects") from None
            if not isinstance(record, dict):
                raise KDError(f"{path}: line {lineno} is not a JSON object")
            records.append(record)
        header = sorted({key for record in records for key in record})
    else:
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
        try:
            table = [row for row in reader if row]
        except csv.Error as exc:
            raise KDError(f"{path}: malformed CSV near line {reader.line_num} ({exc})") from None
        if not table:
            raise KDError(f"{path}: file is empty")
        header = [name.strip() for name in table[0]]
        records = []
        for rowno, row in enumerate(table[1:], 1):
            if len(row) != len(header):
                raise KDError(f"{path}: row {rowno} has {len(row)} fields, the header has {len(header)} "
                              "(malformed CSV quoting?)")
            records.append(dict(zip(header, row, strict=True)))
    text_col = next((c for c in TEXT_COLUMNS if c in header), None)
    if text_col is None:
        raise KDError(f"{path}: no 'text' (or 'sentence') column; found columns {header}")
    if "label" not in header:
        raise KDError(f"{path}: no 'label' column; found columns {header}")
    if not records:
        raise KDError(f"{path}: has a header but no data rows")
    texts, labels = [], []
    for rowno, record in enumerate(records, 1):
        value = record.get(text_col)
        if not isinstance(value, str) or not value.strip():
            raise KDError(f"{path}: row {rowno}: column '{text_col}' is empty")
        label = _as_int(record.get("label"))
        if label is None:
            raise KDError(f"{path}: row {rowno}: column 'label' value {record.get('label')!r} is not an integer")
        if not 0 <= label < num_classes:
            raise KDError(f"{path}: row {rowno}: label {label} is outside the model's classes 0..{num_classes - 1}")
        texts.append(value)
        labels.append(label)
    return texts, labels


def _as_int(value) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


def _int_feature():
    from datasets import Value

    return Value("int64")
