"""The whole experiment behind ``python -m kd_helpers distill``: teacher, student before, KD, CE-only baseline.

Notebooks call the same pieces: ``prepare`` once, then ``new_student`` / ``train_student`` as often as needed.
"""

from __future__ import annotations

import copy
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from transformers import set_seed

from kd_helpers import data as kd_data
from kd_helpers import precision
from kd_helpers.cache import atomic_dir, atomic_write_json, check_writable
from kd_helpers.config import KDConfig, pick_device
from kd_helpers.errors import KDError
from kd_helpers.metrics import metrics_table
from kd_helpers.models import (
    HUB_STUDENT,
    HUB_TEACHER,
    freeze,
    freeze_embeddings,
    load_classifier,
    load_tokenizer,
    make_student,
    minilm_dir,
)
from kd_helpers.stats import accuracy_se
from kd_helpers.teacher import cached_teacher_logits, train_teacher
from kd_helpers.train import CachedTeacher, TrainingRun, distill, evaluate_model, optimizer_name

LABEL_NAMES = {0: "negative", 1: "positive"}
SMALL_VALIDATION_ROWS = 300  # below this one accuracy's standard error exceeds ~2.3 points: the run warns


@dataclass
class Setup:
    """Everything a student run needs, built once: data, tokenizers, loaders, the frozen teacher, its logits."""

    config: KDConfig
    device: torch.device
    splits: object  # DatasetDict with raw text: train, validation
    tokenizer: object  # the student's
    base: object  # the student's starting weights (a classifier with a random head)
    teacher: object
    teacher_tokenizer: object
    teacher_info: dict
    train_set: object  # tokenised for the student
    val_set: object
    val_loader: object
    teacher_val_loader: object
    cached_teacher: CachedTeacher
    teacher_id: str = ""  # names the teacher in result files (its logits are cached by its weights' hash)
    bf16: bool = False  # training forwards under bf16 autocast (precision.resolve_bf16 of config.bf16)
    timings: dict = field(default_factory=dict)

    def train_loader(self, seed: int | None = None, batch_size: int | None = None):
        """A fresh, seeded training loader: every student sees the batches in the same order."""
        cfg = self.config
        return kd_data.make_loader(self.train_set, self.tokenizer, batch_size or cfg.batch_size, shuffle=True,
                                   seed=cfg.seed if seed is None else seed, group_by_length=cfg.group_by_length)


def sources(config: KDConfig) -> tuple[str, str | None]:
    """(student base, teacher) model sources for a preset; teacher None means "fine-tune one from the base"."""
    if config.preset == "distilbert-sst2":
        return config.base or HUB_STUDENT, config.teacher or HUB_TEACHER
    return config.base or str(minilm_dir()), config.teacher


def prepare(config: KDConfig, log=print, progress: bool = True, device: torch.device | None = None) -> Setup:
    """Load the data, the student's base, and the teacher (trained and cached on first use).

    ``device``: this process's device when a launcher chose it (:mod:`kd_helpers.parallel`); else ``config.device``.
    """
    timings = {}
    start = time.perf_counter()
    set_seed(config.seed)
    device = device or pick_device(config.device)
    bf16 = precision.resolve_bf16(device, config.bf16)
    splits = kd_data.load_splits(config.data, seed=config.seed)
    splits["train"] = kd_data.subsample(splits["train"], config.train_rows, config.seed)
    splits["validation"] = kd_data.subsample(splits["validation"], config.val_rows, config.seed)
    if "test" in splits:
        splits["test"] = kd_data.subsample(splits["test"], config.val_rows, config.seed)
    base_source, teacher_source = sources(config)
    tokenizer = load_tokenizer(base_source)
    base = load_classifier(base_source, num_labels=2)
    timings["load_s"] = time.perf_counter() - start

    start = time.perf_counter()
    if teacher_source is None:
        teacher, teacher_tokenizer, info = train_teacher(
            base_source, splits["train"], epochs=config.teacher_epochs, lr=config.teacher_lr,
            batch_size=config.batch_size, max_length=config.max_length, seed=config.seed, device=device,
            progress=progress, bf16=bool(config.bf16), log=log)  # fp32 unless asked: precision.py
        teacher_id = f"teacher:{info['key']}"
    else:
        teacher = load_classifier(teacher_source, num_labels=None)
        teacher_tokenizer = load_tokenizer(teacher_source)
        info = {"source": teacher_source, "cached": True}
        teacher_id = teacher_source
    if teacher.config.num_labels != base.config.num_labels:
        raise KDError(f"teacher {teacher_source or 'fine-tuned base'} has {teacher.config.num_labels} labels, "
                      f"the student has {base.config.num_labels}; they must predict the same classes")
    freeze(teacher).to(device)
    timings["teacher_s"] = time.perf_counter() - start

    start = time.perf_counter()
    train_set = kd_data.tokenize(splits["train"], tokenizer, config.max_length)
    val_set = kd_data.tokenize(splits["validation"], tokenizer, config.max_length)
    val_loader = kd_data.make_loader(val_set, tokenizer, batch_size=64)
    teacher_val = kd_data.tokenize(splits["validation"], teacher_tokenizer, config.max_length)
    teacher_val_loader = kd_data.make_loader(teacher_val, teacher_tokenizer, batch_size=64)
    cached = cached_teacher_logits(teacher, teacher_tokenizer, splits["train"], config.max_length, device=device,
                                   log=log)
    timings["teacher_logits_s"] = time.perf_counter() - start
    return Setup(config, device, splits, tokenizer, base, teacher, teacher_tokenizer, info, train_set, val_set,
                 val_loader, teacher_val_loader, cached, teacher_id, bf16, timings)


def new_student(setup: Setup, kind: str | None = None, seed: int | None = None):
    """A fresh un-fine-tuned student; the same seed always gives the same initial weights."""
    cfg = setup.config
    student = make_student(setup.base, kind or cfg.student, seed=cfg.seed if seed is None else seed)
    student.config.id2label = dict(LABEL_NAMES)
    student.config.label2id = {name: i for i, name in LABEL_NAMES.items()}
    if cfg.freeze_embeddings:
        freeze_embeddings(student)
    return student.to(setup.device)


def train_student(setup: Setup, alpha: float | None = None, temperature: float | None = None,
                  epochs: int | None = None, student=None, live_teacher: bool = False, verbose: bool = True,
                  progress: bool = True, run: TrainingRun | None = None):
    """Distil a (fresh, unless given) student with the cached teacher logits; returns ``(student, run)``.

    Ctrl-C propagates; a ``run`` you pass keeps the finished epochs.
    """
    cfg = setup.config
    student = student if student is not None else new_student(setup)
    set_seed(cfg.seed)
    teacher = setup.teacher if live_teacher else setup.cached_teacher
    run = distill(student, teacher, setup.train_loader(), setup.val_loader, setup.device,
                  epochs=epochs or cfg.epochs, lr=cfg.lr,
                  temperature=cfg.temperature if temperature is None else temperature,
                  alpha=cfg.alpha if alpha is None else alpha, verbose=verbose, progress=progress,
                  bf16=setup.bf16, run=run)
    return student, run


def run_experiment(config: KDConfig, log=print, progress: bool = True) -> dict:
    """Teacher, student before, KD student, CE-only student, metrics; saves results.json and the student.

    On Ctrl-C the finished parts are saved with ``"interrupted": true``.
    """
    out = check_writable(config.output_dir)
    results = {"config": config.to_dict(), "interrupted": False, "environment": environment()}
    started = time.perf_counter()
    try:
        setup = prepare(config, log=log, progress=progress)
        results["timings"] = setup.timings
        results["validation_rows"] = len(setup.splits["validation"])
        if results["validation_rows"] < SMALL_VALIDATION_ROWS:
            log(f"warning: only {results['validation_rows']} validation rows: one accuracy's standard error is "
                f"about {100 * accuracy_se(0.8, results['validation_rows']):.0f} points at 80 % accuracy; "
                "treat differences of a few points as noise")
        results["teacher_accuracy"] = evaluate_model(setup.teacher, setup.teacher_val_loader, setup.device)
        log(f"Teacher accuracy: {results['teacher_accuracy']:.4f} "
            f"({'loaded from cache' if setup.teacher_info.get('cached') else 'trained now'})")

        results["precision"] = precision.name(setup.bf16)
        results["optimizer"] = optimizer_name(setup.device)
        student = new_student(setup)
        before = copy.deepcopy(student).cpu()
        results["student_before_accuracy"] = evaluate_model(student, setup.val_loader, setup.device)
        log(f"Student before distillation: {results['student_before_accuracy']:.4f}")

        log(f"\nDistilling (T={config.temperature}, alpha={config.alpha} on the KL term)...")
        start = time.perf_counter()
        run = TrainingRun()
        results.update(history=run.history, steps=run.steps)  # filled as epochs finish, saved on Ctrl-C
        student, run = train_student(setup, student=student, progress=progress, run=run)
        results["student_after_accuracy"] = _last_acc(run)
        results["timings"]["distill_s"] = time.perf_counter() - start
        save_student(student, setup.tokenizer, out / "student")

        if config.baseline:
            log("\nCE-only baseline (alpha=0, same initial student, same budget)...")
            start = time.perf_counter()
            ce_run = TrainingRun()
            results.update(baseline_history=ce_run.history, baseline_steps=ce_run.steps)
            ce_student, ce_run = train_student(setup, alpha=0.0, progress=progress, run=ce_run)
            results["baseline_accuracy"] = _last_acc(ce_run)
            results["timings"]["baseline_s"] = time.perf_counter() - start
        else:
            ce_student = None

        start = time.perf_counter()
        log("\nMeasuring agreement, calibration, size and latency...")
        results["models"] = metrics_table(setup, before, student, ce_student)
        results["timings"]["metrics_s"] = time.perf_counter() - start

        if config.small_student and "test" in setup.splits:
            start = time.perf_counter()
            results["small_student"] = small_student_run(setup, out / "student_small", log=log)
            results["timings"]["small_student_s"] = time.perf_counter() - start
    except KeyboardInterrupt:
        results["interrupted"] = True
        log("Interrupted: saving what finished.")
    results["timings"] = {**results.get("timings", {}), "total_s": time.perf_counter() - started}
    atomic_write_json(out / "results.json", results)
    return results


def small_student_run(setup: Setup, save_to: Path, fraction: float = 0.1, seeds=(1, 2, 3),
                      steps: int | None = None, log=print) -> dict:
    """Where KD pays: the tiny student, KD + transfer set vs CE-only, over seeds, on the test split.

    The teacher was fine-tuned on *all* training labels; the students see only ``fraction`` of them (as when a
    teacher comes from elsewhere). The first seed's KD student is saved to ``save_to``.
    """
    from kd_helpers import transfer
    from kd_helpers.metrics import latency
    from kd_helpers.models import count_parameters

    steps = steps or (40 if setup.config.fast else 800)
    log(f"\nThe regime where distillation pays: tiny student, {fraction:.0%} of the labels known, a transfer set "
        f"labelled by the teacher, {len(seeds)} seeds, {steps} steps each...")
    ts = transfer.prepare_transfer(setup, fraction=fraction, log=log)
    comparison = transfer.compare_methods(ts, list(seeds), steps, methods=("kd", "ce"),
                                          temperature=setup.config.temperature, alpha=setup.config.alpha, log=log)
    kd_student = comparison.pop("students")["kd"]
    save_student(kd_student, setup.tokenizer, save_to)
    texts = setup.splits["test"]["text"]
    batch1 = setup.tokenizer(texts[:1], return_tensors="pt")
    batch32 = setup.tokenizer(texts[:32], return_tensors="pt", padding=True)
    speed = {name: latency(model, batch1, batch32, min_run_time=0.2 if setup.config.fast else 1.0)
             for name, model in (("student", kd_student), ("teacher", setup.teacher))}
    setup.teacher.to(setup.device)
    test = comparison["tests"]["kd"]
    return {"seeds": list(seeds), "fraction": fraction, "steps": steps, "batch_size": setup.config.batch_size,
            "labelled_rows": comparison["labelled_rows"], "transfer_rows": comparison["transfer_rows"],
            "kd_test_accuracy": comparison["methods"]["kd"]["test_accuracy"],
            "ce_test_accuracy": comparison["methods"]["ce"]["test_accuracy"],
            "paired_p_value": test["mcnemar_pooled"]["p_value"],
            "per_seed_p_values": [t["p_value"] for t in test["mcnemar_per_seed"]],
            "difference_ci": test["bootstrap"], "by_length": comparison["by_length"],
            "teacher_test_accuracy": teacher_test_accuracy(setup),
            "student_params": count_parameters(kd_student), "teacher_params": count_parameters(setup.teacher),
            "latency_ms_batch1": {k: v["latency_ms_batch1"] for k, v in speed.items()},
            "throughput_batch32": {k: v["throughput_batch32"] for k, v in speed.items()},
            "saved_to": str(save_to)}


def teacher_test_accuracy(setup: Setup) -> float | None:
    """The teacher's accuracy on the test split (None when the data has none)."""
    if "test" not in setup.splits:
        return None
    test = kd_data.tokenize(setup.splits["test"], setup.teacher_tokenizer, setup.config.max_length)
    return evaluate_model(setup.teacher, kd_data.make_loader(test, setup.teacher_tokenizer, 64), setup.device)


def environment() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "machine": platform.machine(), "threads": torch.get_num_threads(),
            "date": time.strftime("%Y-%m-%d")}


def _last_acc(run) -> float | None:
    return run.history[-1]["accuracy"] if run.history else None


def save_student(student, tokenizer, folder: Path) -> None:
    """Model and tokenizer into ``folder``, atomically (a crash leaves the previous copy)."""

    def build(tmp: Path) -> None:
        student.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    atomic_dir(folder, build)
