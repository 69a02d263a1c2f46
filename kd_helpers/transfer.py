"""Where distillation pays: a small student, a transfer set the teacher labels once, several seeds.

Three students get the same number of optimizer steps, batch size, learning-rate schedule, initial weights
(per seed) and labelled rows:

- ``"kd"``: half of each batch labelled rows (alpha blend), half transfer rows (teacher soft targets only);
- ``"ce"``: cross-entropy on labelled rows only (no teacher, no augmentation);
- ``"aug_ce"``: like ``"kd"`` but the transfer rows are trained with cross-entropy on their source
  sentence's label, without the teacher (augmentation alone).

The transfer set is the augmented training sentences (:mod:`kd_helpers.augment`) plus, when only a
``fraction`` of the labels is known, the training sentences whose labels are hidden.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from datasets import Dataset
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding, get_linear_schedule_with_warmup, set_seed

from kd_helpers import data as kd_data
from kd_helpers.augment import augment
from kd_helpers.cache import cache_key, load_tensors, save_tensors
from kd_helpers.config import cache_dir
from kd_helpers.errors import KDError
from kd_helpers.experiment import Setup, new_student
from kd_helpers.loss import UNLABELLED, DistillationLoss
from kd_helpers.models import state_dict_sha256
from kd_helpers.teacher import cached_teacher_logits
from kd_helpers.train import CachedTeacher, TrainingRun, make_optimizer, predict_logits, train_epoch

METHODS = ("kd", "ce", "aug_ce")
N_VARIANTS = 8  # variants per training sentence where labels are few (make demo, the sweep); fast to label
COMPARE_VARIANTS = 20  # all labels (compare, notebook 03): validation preferred 20 to 8 (benchmarks/README.md)
# The all-labels comparison trains in fp32 unless bf16 is asked for (KD_CPU_BF16=1): under the CPU's bf16 default
# its KD student scored lower on the test split in every seed, so equal accuracy was not shown there
# (benchmarks/README.md, "bf16 on the CPU"). make demo and the sweep (10 % of the labels) use the default.
COMPARE_BF16 = False


def compare_bf16(config) -> bool:
    """The all-labels comparison's precision: :data:`COMPARE_BF16` unless ``KD_CPU_BF16`` forces one."""
    return COMPARE_BF16 if config.bf16 is None else bool(config.bf16)


@dataclass
class TransferSetup:
    """The pool of rows (labelled training rows first, then transfer rows), their labels per method, the
    teacher's logits for every row, and the test split tokenised for the student."""

    setup: Setup
    pool: Dataset  # tokenised for the student; ``idx`` = row in the pool
    teacher: CachedTeacher  # logits for every pool row
    labelled_ids: list
    transfer_ids: list  # what the KD student learns from the teacher alone
    augmented_ids: list  # variants of labelled sentences (what "aug_ce" trains on with the source label)
    labels: dict  # method -> LongTensor over pool rows (UNLABELLED where that method has no label)
    fraction: float
    n_variants: int
    test_loader: DataLoader | None = None
    timings: dict = field(default_factory=dict)
    fingerprints: dict = field(default_factory=dict)  # hashes of the pool and validation rows (student cache keys)
    bf16: bool = False  # the students' training forwards under bf16 autocast (precision.py)


def labelled_mask(n: int, fraction: float, seed: int) -> torch.Tensor:
    """Which of ``n`` training rows keep their label when only a ``fraction`` is known (seeded, random)."""
    known = torch.zeros(n, dtype=torch.bool)
    known[torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: max(1, round(fraction * n))]] = True
    return known


def prepare_transfer(setup: Setup, n_variants: int = N_VARIANTS, fraction: float = 1.0, label_seed: int = 0,
                     augment_seed: int = 0, bf16: bool | None = None, log=print) -> TransferSetup:
    """Build the transfer set, have the teacher label it (once; cached on disk), and tokenise the pool.

    ``bf16``: the students' training precision; None is the setup's (:mod:`kd_helpers.precision`)."""
    if not 0.0 < fraction <= 1.0:
        raise KDError(f"fraction={fraction!r}: must be in (0, 1]")
    start = time.perf_counter()
    splits, cfg = setup.splits, setup.config
    train = splits["train"]
    held_out = list(splits["validation"]["text"]) + (list(splits["test"]["text"]) if "test" in splits else [])
    variants = augment(train["text"], n_variants, seed=augment_seed, exclude=held_out)
    variants = variants.add_column("label", [UNLABELLED] * len(variants))
    variant_logits = cached_teacher_logits(setup.teacher, setup.teacher_tokenizer, variants.select_columns(
        ["text", "label"]), cfg.max_length, device=setup.device, log=log).logits
    timings = {"augment_and_teacher_s": time.perf_counter() - start}

    n = len(train)
    known = labelled_mask(n, fraction, label_seed) if fraction < 1.0 else torch.ones(n, dtype=torch.bool)
    train_labels = torch.tensor(train["label"])
    sources = torch.tensor(variants["source"], dtype=torch.long)
    texts = list(train["text"]) + list(variants["text"])
    rows = Dataset.from_dict({"text": texts, "label": [0] * len(texts)})  # labels: per method, below
    pool = kd_data.tokenize(rows, setup.tokenizer, cfg.max_length)
    unknown = torch.full((len(variants),), UNLABELLED)
    kd_labels = torch.cat([torch.where(known, train_labels, UNLABELLED), unknown])
    aug_labels = torch.cat([torch.where(known, train_labels, UNLABELLED),
                            torch.where(known[sources], train_labels[sources], UNLABELLED)])
    labelled = known.nonzero().flatten().tolist()
    transfer = (~known).nonzero().flatten().tolist() + list(range(n, n + len(variants)))
    augmented = [n + i for i in known[sources].nonzero().flatten().tolist()]
    teacher = CachedTeacher(torch.cat([setup.cached_teacher.logits, variant_logits]))
    test_loader = None
    if "test" in setup.splits:
        test_loader = kd_data.make_loader(kd_data.tokenize(setup.splits["test"], setup.tokenizer, cfg.max_length),
                                          setup.tokenizer, batch_size=64)
    timings["total_s"] = time.perf_counter() - start
    return TransferSetup(setup, pool, teacher, labelled, transfer, augmented,
                         {"kd": kd_labels, "ce": kd_labels, "aug_ce": aug_labels}, fraction, n_variants,
                         test_loader, timings, bf16=setup.bf16 if bf16 is None else bool(bf16))


def mixed_batches(first: list, second: list, lengths: list, batch_size: int, steps: int, second_share: float,
                  seed: int, chunk_batches: int = kd_data.CHUNK_BATCHES) -> list:
    """``steps`` batches: ``round(second_share * batch_size)`` rows from ``second``, the rest from ``first``.

    Each pool is read in a fresh random order, cycling when it runs out. Within chunks of ``chunk_batches``
    batches, each pool's rows are sorted by length and the batches shuffled (less padding, no global sort).
    """
    generator = torch.Generator().manual_seed(seed)
    n_second = round(second_share * batch_size) if second else 0
    streams = [_stream(first, generator), _stream(second, generator) if n_second else None]
    sizes = [batch_size - n_second, n_second]
    batches = []
    while len(batches) < steps:
        k = min(chunk_batches, steps - len(batches))
        parts = []
        for stream, size in zip(streams, sizes, strict=True):
            if size == 0:
                parts.append([[] for _ in range(k)])
                continue
            chunk = sorted((next(stream) for _ in range(k * size)), key=lambda i: lengths[i])
            parts.append([chunk[j * size:(j + 1) * size] for j in range(k)])
        chunk_batches_ = [a + b for a, b in zip(*parts, strict=True)]
        batches += [chunk_batches_[i] for i in torch.randperm(k, generator=generator).tolist()]
    return batches


def _stream(ids: list, generator: torch.Generator):
    if not ids:
        raise KDError("a training pool is empty (no labelled rows or no transfer rows)")
    while True:
        for i in torch.randperm(len(ids), generator=generator).tolist():
            yield ids[i]


def train_method(ts: TransferSetup, method: str, seed: int, steps: int, temperature: float = 4.0,
                 alpha: float = 0.7, lr: float | None = None, evals: int = 8, batch_size: int | None = None,
                 kind: str = "tiny", progress: bool = False, transfer_share: float = 0.5,
                 cache: bool = False) -> tuple:
    """Train one student by ``method`` for ``steps`` optimizer steps, evaluating on validation ``evals`` times.

    ``transfer_share``: the share of each batch drawn from the transfer rows ("kd") or augmented rows
    ("aug_ce"); the rest are labelled rows. "ce" trains on labelled rows only. ``cache=True`` keeps the trained
    student and its run under ``KD_CACHE_DIR/students/`` (about 16 MB for the tiny student), keyed by everything
    that decides them (rows, labels, teacher logits, initial weights, hyper-parameters, library versions and
    kd_helpers' own source), and loads them instead of training when the same call comes again (notebook 03's
    solution reuses notebook 03's).

    Returns ``(student, run)``: ``run.history`` has one record per evaluation (step, mean losses since the
    last one, validation accuracy), ``run.steps`` the losses of every optimizer step.
    """
    if method not in METHODS:
        raise KDError(f"method {method!r}: choose one of {', '.join(METHODS)}")
    cfg = ts.setup.config
    batch_size = batch_size or cfg.batch_size
    lr = lr or (cfg.lr if cfg.student == kind else _default_lr(kind))
    second = {"kd": ts.transfer_ids, "ce": [], "aug_ce": ts.augmented_ids}[method]
    lengths = [len(ids) for ids in ts.pool["input_ids"]]
    batches = mixed_batches(ts.labelled_ids, second, lengths, batch_size, steps, transfer_share, seed)
    student = new_student(ts.setup, kind=kind, seed=seed)
    if cache:
        path, key = _student_cache_entry(ts, method, student, batches, temperature, alpha, lr, evals)
        try:
            tensors, extra = load_tensors(path, key)
            student.load_state_dict(tensors)
            return student, TrainingRun(history=extra["history"], steps=extra["steps"], cached=True)
        except (ValueError, KeyError, RuntimeError):
            pass  # missing, stale or corrupt: train (and overwrite it)
    set_seed(seed)
    criterion = DistillationLoss(temperature, 0.0 if method != "kd" else alpha)
    optimizer = make_optimizer([p for p in student.parameters() if p.requires_grad], lr)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(0.1 * steps), steps)
    collate = _Collate(ts.setup.tokenizer, ts.labels[method])
    history, done, step_losses = [], 0, []
    for segment in _split(batches, evals):
        loader = DataLoader(ts.pool, batch_sampler=segment, collate_fn=collate)
        losses = train_epoch(student, ts.teacher, loader, optimizer, scheduler, criterion, ts.setup.device,
                             progress=progress, desc=f"{method} seed {seed}", bf16=ts.bf16)
        step_losses += [{"step": done + i, **{k: round(v, 5) for k, v in row.items()}}
                        for i, row in enumerate(losses["steps"], 1)]
        done += len(segment)
        accuracy = evaluate(student, ts.setup.val_loader, ts.setup.device)
        history.append({"step": done, "loss": losses["total_loss"], "distill_loss": losses["distill_loss"],
                        "student_loss": losses["student_loss"], "accuracy": accuracy})
    if cache:
        save_tensors(path, student.state_dict(), key, {"history": history, "steps": step_losses})
    return student, TrainingRun(history=history, steps=step_losses)


def _student_cache_entry(ts: TransferSetup, method: str, student, batches: list, temperature: float,
                         alpha: float, lr: float, evals: int) -> tuple:
    """Where a trained student is cached, and the key that says exactly what it was trained from."""
    import transformers

    def sha(*tensors) -> str:
        digest = hashlib.sha256()
        for t in tensors:
            digest.update(t.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    def rows(column: list) -> list:  # every row's tokens, and the row lengths so that boundaries count too
        return [torch.tensor([len(ids) for ids in column]), *(torch.tensor(ids) for ids in column)]

    if "pool" not in ts.fingerprints:
        ts.fingerprints["pool"] = sha(*rows(ts.pool["input_ids"]), ts.teacher.logits)
        ts.fingerprints["validation"] = sha(*rows(ts.setup.val_set["input_ids"]),
                                            torch.tensor(ts.setup.val_set["labels"]))
    cfg = ts.setup.config
    key = cache_key(code=_code_fingerprint(), pool=ts.fingerprints["pool"], validation=ts.fingerprints["validation"],
                    labels=sha(ts.labels[method]), method=method, initial=state_dict_sha256(student),
                    batches=hashlib.sha256(json.dumps(batches).encode()).hexdigest(), temperature=temperature,
                    alpha=alpha, lr=lr, evals=evals, bf16=ts.bf16, device=ts.setup.device.type,
                    freeze_embeddings=cfg.freeze_embeddings, torch=torch.__version__,
                    transformers=transformers.__version__)
    return cache_dir() / "students" / f"{method}-{key}.safetensors", key


@functools.cache
def _code_fingerprint() -> str:
    """sha256 of kd_helpers' own source files: after any change to the code, cached students are trained again."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def _default_lr(kind: str) -> float:
    from kd_helpers.config import DEFAULT_LR

    return DEFAULT_LR[kind]


class _Collate:
    """Pad a batch and attach the method's labels (looked up by pool row, never taken from the row itself)."""

    def __init__(self, tokenizer, labels: torch.Tensor):
        self.pad, self.labels = DataCollatorWithPadding(tokenizer, return_tensors="pt"), labels

    def __call__(self, rows: list) -> dict:
        batch = self.pad([{k: v for k, v in row.items() if k != "labels"} for row in rows])
        batch["labels"] = self.labels[batch["idx"]]
        return batch


def _split(items: list, parts: int) -> list:
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (i < extra)
        if end > start:
            out.append(items[start:end])
        start = end
    return out


@torch.inference_mode()
def predictions(model, loader, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(predicted class, true label)`` per row, in the split's row order."""
    logits = predict_logits(model, loader, device)
    data = loader.dataset  # tokenised rows: ``idx`` is each row's position, so labels line up with the logits
    labels = torch.empty(len(logits), dtype=torch.long)
    labels[torch.tensor(data["idx"])] = torch.tensor(data["labels"])
    return logits.argmax(-1), labels


def evaluate(model, loader, device) -> float:
    """Accuracy (the same number ``evaluate_model`` gives; kept here so that this module reads on its own)."""
    predicted, labels = predictions(model, loader, device)
    return (predicted == labels).sum().item() / len(labels)


LENGTH_BUCKETS = ((1, 9), (10, 24), (25, 10_000))  # words: short, medium, long (real reviews run long)


def compare_methods(ts: TransferSetup, seeds: list, steps: int, methods: tuple = METHODS,
                    temperature: float = 4.0, alpha: float = 0.7, kind: str = "tiny", evals: int = 8,
                    log=print, cache: bool = False) -> dict:
    """Train every method for every seed; test-split accuracy per seed, paired tests against ``"ce"``.

    Returns a JSON-ready dict: ``methods[m] = {"test_accuracy": [...per seed], "history": [...]}``,
    ``tests[m]`` (vs CE: McNemar per seed and pooled, paired bootstrap of the mean difference),
    ``teacher_share`` (the same tests, KD vs "aug_ce") and accuracy by length bucket. The first seed's
    students are kept in ``students`` (not stored).
    """

    if ts.test_loader is None:
        raise KDError("this data has no test split: the comparison reports test accuracy")
    test = ts.setup.splits["test"]
    words = torch.tensor([len(t.split()) for t in test["text"]])
    out = {"seeds": list(seeds), "steps": steps, "batch_size": ts.setup.config.batch_size, "kind": kind,
           "temperature": temperature, "alpha": alpha, "fraction": ts.fraction, "n_variants": ts.n_variants,
           "labelled_rows": len(ts.labelled_ids), "transfer_rows": len(ts.transfer_ids),
           "test_rows": len(test), "methods": {}, "tests": {}, "by_length": {}}
    correct, students = {}, {}
    for method in methods:
        record = {"test_accuracy": [], "history": [], "seconds": []}
        correct[method] = []
        for seed in seeds:
            start = time.perf_counter()
            student, run = train_method(ts, method, seed, steps, temperature, alpha, kind=kind, evals=evals,
                                        cache=cache)
            predicted, labels = predictions(student, ts.test_loader, ts.setup.device)
            right = (predicted == labels)
            correct[method].append(right)
            record["test_accuracy"].append(right.sum().item() / len(right))
            record["history"].append(run.history)
            record["seconds"].append(round(time.perf_counter() - start, 1))
            students.setdefault(method, student)
            took = "loaded from the cache" if run.cached else f"{record['seconds'][-1]:.0f} s"
            log(f"  {method:7s} seed {seed}: test accuracy {record['test_accuracy'][-1]:.4f} ({took})")
        out["methods"][method] = record
        right = torch.stack(correct[method]).float()  # (seeds, rows)
        out["by_length"][method] = {_bucket(lo, hi): float(right[:, (words >= lo) & (words <= hi)].mean())
                                    for lo, hi in LENGTH_BUCKETS}
    for method in methods:
        if method != "ce" and "ce" in correct:
            out["tests"][method] = paired_tests(correct[method], correct["ce"])
    if "kd" in correct and "aug_ce" in correct:  # the same rows with and without the teacher: the teacher's share
        out["teacher_share"] = paired_tests(correct["kd"], correct["aug_ce"])
    out["bucket_rows"] = {_bucket(lo, hi): int(((words >= lo) & (words <= hi)).sum()) for lo, hi in LENGTH_BUCKETS}
    out["students"] = students
    return out


def paired_tests(correct_a: list, correct_b: list) -> dict:
    """Student a vs student b on the same test rows, one boolean tensor per seed each: the difference of mean
    accuracy, McNemar's exact test per seed and pooled over seeds, a paired bootstrap interval."""
    from kd_helpers import stats

    pairs = [(a.numpy(), b.numpy()) for a, b in zip(correct_a, correct_b, strict=True)]
    mean_a = torch.stack(correct_a).float().mean(0).numpy()
    mean_b = torch.stack(correct_b).float().mean(0).numpy()
    return {"difference_mean": float(mean_a.mean() - mean_b.mean()),
            "mcnemar_per_seed": [stats.mcnemar(a, b) for a, b in pairs],
            "mcnemar_pooled": stats.pooled_mcnemar(pairs),
            "bootstrap": _bootstrap_seed_mean(correct_a, correct_b)}


def _bucket(lo: int, hi: int) -> str:
    return f"{lo}-{hi}" if hi < 10_000 else f">={lo}"


def _bootstrap_seed_mean(correct_a: list, correct_b: list) -> dict:
    """Paired bootstrap over test rows of the seed-averaged accuracy difference."""
    from kd_helpers import stats

    a = torch.stack(correct_a).float().mean(0).numpy()
    b = torch.stack(correct_b).float().mean(0).numpy()
    # rows' seed-averaged correctness; the bootstrap resamples rows, the same rows for both students
    return stats.paired_bootstrap(a, b)
