"""kd_helpers' default path against the reference loop and against what practitioners use: a Trainer.

Variants (``--variants``; each seed and variant runs in its own subprocess, peak RSS per run):

- ``reference``: the loop as written in the reference notebook: every batch padded to 128 tokens, a plain
  shuffled DataLoader, and a live teacher forward at every step (the real teacher passed to ``train_epoch``).
- ``kd_helpers``: dynamic padding, length-grouped chunks (``Setup.train_loader``), cached teacher logits, the
  default optimizer (``train.make_optimizer``: fused AdamW on a CPU or CUDA), precision
  (:mod:`kd_helpers.precision`) and word-embedding training (``seen_rows.seen_rows_only``: only the rows the
  training rows use, as ``train.distill`` does); the one-off teacher pass is recomputed here (never loaded from
  disk) and counted in its time. ``kd_helpers_bf16`` / ``kd_helpers_fp32`` force the precision;
  ``kd_helpers_all_rows`` trains the whole table (kd_helpers' default before 2026-12-06, afternoon);
  ``kd_helpers_fused[_bf16]`` force the fused kernel (whole table); ``kd_helpers_foreach`` uses PyTorch's default
  multi-tensor AdamW instead (whole table), and ``kd_helpers_foreach_fp32`` is kd_helpers' default before
  2026-12-06 (multi-tensor AdamW, fp32, whole table).
- ``trainer_random`` / ``trainer_grouped``: the pattern a practitioner would write instead: a
  ``transformers.Trainer`` subclass whose ``compute_loss`` runs the live teacher under ``no_grad`` (the common
  "DistillationTrainer"), dynamic padding (``DataCollatorWithPadding``), random or length-grouped sampling
  (``train_sampling_strategy``), in the Trainer's default precision (fp32 on the CPU); ``trainer_grouped_bf16``
  adds ``bf16=True``, for the record.

Same rows, initial student per seed (asserted by weight fingerprint), epochs, lr, linear warm-up (10 %) and decay,
AdamW (weight decay 0.01; the Trainer exempts biases and LayerNorm from it), loss and seeds for every variant.
The sweep compares kd_helpers' cached-logit sweep with the same grid run through the Trainer pattern.
Last stdout line: a JSON object. Commands: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import time
from contextlib import nullcontext

import torch
import transformers
from torch import nn
from torch.utils.data import DataLoader
from transformers import get_linear_schedule_with_warmup, set_seed

from kd_helpers import data as kd_data
from kd_helpers import precision
from kd_helpers.config import DEFAULT_LR, KDConfig, fast_mode
from kd_helpers.experiment import Setup, new_student, prepare
from kd_helpers.loss import DistillationLoss
from kd_helpers.models import freeze_embeddings, state_dict_sha256
from kd_helpers.seen_rows import seen_rows_only
from kd_helpers.stats import mean_sd
from kd_helpers.train import (
    CachedTeacher,
    evaluate_model,
    make_optimizer,
    optimizer_name,
    predict_logits,
    train_epoch,
)

REFERENCE_MAX_LENGTH = 128  # the reference tokenises with padding="max_length", max_length=128
VARIANTS = ("reference", "kd_helpers", "kd_helpers_fp32", "kd_helpers_bf16", "kd_helpers_all_rows", "kd_helpers_fused",
            "kd_helpers_fused_bf16", "kd_helpers_foreach", "kd_helpers_foreach_fp32", "kd_helpers_freeze",
            "trainer_random", "trainer_grouped", "trainer_grouped_bf16")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)  # stdout carries only the result JSON of a child


def load_setup(args: argparse.Namespace) -> Setup:
    """The (cached) teacher and the data. ``--fast`` uses KD_FAST's small teacher and splits: smoke checks only."""
    if args.threads:
        torch.set_num_threads(args.threads)
    # the teacher is kd_helpers' default one (seed 42) for every run; --seed only changes the student and its batches
    return prepare(KDConfig.from_env(fast=args.fast), log=log, progress=False)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def teacher_pass(setup: Setup, raw) -> CachedTeacher:
    """One teacher forward over ``raw`` (tokenised with the teacher's own tokenizer), wrapped for lookup."""
    tokenizer = setup.teacher_tokenizer
    loader = kd_data.make_loader(kd_data.tokenize(raw, tokenizer, setup.config.max_length), tokenizer, 64)
    return CachedTeacher(predict_logits(setup.teacher, loader, setup.device))


def with_train_rows(setup: Setup, raw) -> Setup:
    """``setup`` training on ``raw`` (row indices 0..n-1, matching a ``teacher_pass`` over the same rows)."""
    return dataclasses.replace(setup, train_set=kd_data.tokenize(raw, setup.tokenizer, setup.config.max_length))


def reference_loader(raw, tokenizer, batch_size: int, seed: int | None) -> DataLoader:
    """The reference's data path: pad every row to 128 tokens, plain (shuffled) DataLoader."""
    def encode(batch: dict) -> dict:
        return tokenizer(batch["text"], padding="max_length", truncation=True, max_length=REFERENCE_MAX_LENGTH)

    encoded = raw.map(encode, batched=True, load_from_cache_file=False).rename_column("label", "labels")
    columns = [c for c in ("input_ids", "attention_mask", "token_type_ids", "labels") if c in encoded.column_names]
    encoded.set_format("torch", columns=columns)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return DataLoader(encoded, batch_size=batch_size, shuffle=seed is not None, generator=generator)


def train(student: nn.Module, teacher, loader, setup: Setup, args: argparse.Namespace, epochs: int,
          temperature: float, alpha: float, val_loader=None, bf16: bool = False, kernel: str = "default",
          seen_rows: bool = True) -> dict:
    """AdamW + linear warm-up, ``train_epoch`` per epoch (timed), then ``evaluate_model`` (timed apart).

    ``kernel``: ``"default"`` is kd_helpers' (``make_optimizer``), ``"fused"`` PyTorch's fused AdamW kernel (what
    the Trainer uses by default with torch >= 2.8), ``"foreach"`` PyTorch's default multi-tensor one (what the
    reference loop uses); the same update rule. ``seen_rows`` trains only the word-embedding rows the training rows
    use, as ``train.distill`` does; its set-up is timed with the first epoch.
    """
    set_seed(args.seed)
    criterion = DistillationLoss(temperature=temperature, alpha=alpha)
    out = {"epoch_s": [], "eval_s": 0.0, "accuracy": [], "loss": []}
    start = time.perf_counter()
    with seen_rows_only(student, loader) if seen_rows else nullcontext() as rows:
        params = [p for p in student.parameters() if p.requires_grad]
        optimizer = (make_optimizer(params, args.lr) if kernel == "default"
                     else torch.optim.AdamW(params, lr=args.lr, **({"fused": True} if kernel == "fused" else {})))
        if rows is not None:
            rows.follow(optimizer)
        total = epochs * len(loader)
        scheduler = get_linear_schedule_with_warmup(optimizer, int(0.1 * total), total)
        for _ in range(epochs):
            losses = train_epoch(student, teacher, loader, optimizer, scheduler, criterion, setup.device,
                                 progress=False, bf16=bf16)
            out["epoch_s"].append(time.perf_counter() - start)
            out["loss"].append(losses["total_loss"])
            if val_loader is not None:
                start = time.perf_counter()
                out["accuracy"].append(evaluate_model(student, val_loader, setup.device))
                out["eval_s"] += time.perf_counter() - start
            start = time.perf_counter()
    return out


def distillation_trainer(student: nn.Module, teacher: nn.Module, train_set, setup: Setup, args: argparse.Namespace,
                         epochs: int, temperature: float, alpha: float, sampling: str, bf16: bool, workdir: str):
    """The Trainer pattern: ``compute_loss`` runs the live teacher and the same ``DistillationLoss``."""
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    criterion = DistillationLoss(temperature=temperature, alpha=alpha)

    class DistillationTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            with torch.no_grad():
                teacher_logits = teacher(**inputs).logits
            total, _, _ = criterion(outputs.logits.float(), teacher_logits.float(), labels)
            return (total, outputs) if return_outputs else total

    training_args = TrainingArguments(
        output_dir=workdir, per_device_train_batch_size=args.batch_size, num_train_epochs=epochs,
        learning_rate=args.lr, lr_scheduler_type="linear", warmup_steps=0.1, weight_decay=0.01, seed=args.seed,
        data_seed=args.seed, train_sampling_strategy=sampling, bf16=bf16, use_cpu=setup.device.type == "cpu",
        save_strategy="no", logging_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True,
        dataloader_num_workers=0)
    return DistillationTrainer(model=student, args=training_args, train_dataset=train_set,
                               data_collator=DataCollatorWithPadding(setup.tokenizer, return_tensors="pt"))


def run_variant(name: str, args: argparse.Namespace) -> dict:
    import tempfile

    started = time.perf_counter()
    setup = load_setup(args)
    raw = kd_data.subsample(setup.splits["train"], args.rows, args.data_seed)
    student = new_student(setup, kind=args.student, seed=args.seed)
    result = {"variant": name, "seed": args.seed, "rows": len(raw), "epochs": args.epochs,
              "fingerprint": state_dict_sha256(student)[:16], "setup_s": time.perf_counter() - started}
    teacher_s, precision_name = 0.0, "fp32"
    if name == "reference":
        loader = reference_loader(raw, setup.tokenizer, args.batch_size, args.seed)
        val_loader = reference_loader(setup.splits["validation"], setup.tokenizer, 64, None)
        run = train(student, setup.teacher, loader, setup, args, args.epochs, args.temperature, args.alpha, val_loader,
                    kernel="foreach", seen_rows=False)
    elif name.startswith("trainer"):
        bf16 = name.endswith("_bf16")
        sampling = "group_by_length" if "grouped" in name else "random"
        train_set = kd_data.tokenize(raw, setup.tokenizer, setup.config.max_length)
        with tempfile.TemporaryDirectory() as workdir:
            trainer = distillation_trainer(student, setup.teacher, train_set, setup, args, args.epochs,
                                           args.temperature, args.alpha, sampling, bf16, workdir)
            start = time.perf_counter()
            trainer.train()
            train_s = time.perf_counter() - start
        start = time.perf_counter()
        accuracy = evaluate_model(student, setup.val_loader, setup.device)
        run = {"epoch_s": [train_s], "eval_s": time.perf_counter() - start, "accuracy": [accuracy], "loss": []}
        precision_name = precision.name(bf16)
    else:
        bf16 = {"kd_helpers_bf16": True, "kd_helpers_fp32": False, "kd_helpers_fused_bf16": True,
                "kd_helpers_foreach_fp32": False}.get(name, setup.bf16)
        kernel = "fused" if "fused" in name else "foreach" if "foreach" in name else "default"
        start = time.perf_counter()
        cached = teacher_pass(setup, raw)
        teacher_s = time.perf_counter() - start
        if name == "kd_helpers_freeze":
            freeze_embeddings(student)
        loader = with_train_rows(setup, raw).train_loader(seed=args.seed, batch_size=args.batch_size)
        seen_rows = kernel == "default" and name not in ("kd_helpers_all_rows", "kd_helpers_freeze")
        run = train(student, cached, loader, setup, args, args.epochs, args.temperature, args.alpha,
                    setup.val_loader, bf16=bf16, kernel=kernel, seen_rows=seen_rows)  # accuracy always in fp32
        fused = kernel == "fused" or (kernel == "default" and optimizer_name(setup.device) == "adamw-fused")
        precision_name = precision.name(bf16) + (", fused AdamW" if fused else ", multi-tensor AdamW")
        precision_name += ", used word rows only" if seen_rows else ""
    train_s = teacher_s + sum(run["epoch_s"])
    return {**result, **run, "teacher_pass_s": teacher_s, "train_s": train_s, "wall_s": train_s + run["eval_s"],
            "samples_per_s": len(raw) * args.epochs / train_s, "final_accuracy": run["accuracy"][-1],
            "precision": precision_name,
            "trainable_params": sum(p.numel() for p in student.parameters() if p.requires_grad),
            "torch_threads": torch.get_num_threads()}


def run_sweep(args: argparse.Namespace) -> dict:
    """The T x alpha grid, compact student, ``--sweep-epochs`` each: kd_helpers (one teacher pass, cached logits,
    default precision) against the Trainer pattern (live teacher, length-grouped, fp32), config by config
    (interleaved, so drift is shared). Accuracy on validation after each run."""
    import tempfile

    setup = load_setup(args)
    raw = kd_data.subsample(setup.splits["train"], args.sweep_rows, args.data_seed)
    kd = with_train_rows(setup, raw)
    train_set = kd_data.tokenize(raw, setup.tokenizer, setup.config.max_length)
    start = time.perf_counter()
    cached = teacher_pass(setup, raw)  # also warms up threads and kernels before the first timed config
    pass_s = time.perf_counter() - start
    sweep_args = argparse.Namespace(**{**vars(args), "lr": args.sweep_lr})
    configs = []
    for temperature in args.temperatures:
        for alpha in args.alphas:
            row = {"temperature": temperature, "alpha": alpha}
            student = new_student(setup, kind="compact", seed=args.seed)
            loader = kd.train_loader(seed=args.seed, batch_size=args.batch_size)
            run = train(student, cached, loader, setup, sweep_args, args.sweep_epochs, temperature, alpha,
                        bf16=setup.bf16)
            row["kd_helpers_s"] = sum(run["epoch_s"])
            row["kd_helpers_accuracy"] = evaluate_model(student, setup.val_loader, setup.device)
            student = new_student(setup, kind="compact", seed=args.seed)
            with tempfile.TemporaryDirectory() as workdir:
                trainer = distillation_trainer(student, setup.teacher, train_set, setup, sweep_args, args.sweep_epochs,
                                               temperature, alpha, "group_by_length", False, workdir)
                start = time.perf_counter()
                trainer.train()
                row["trainer_s"] = time.perf_counter() - start
            row["trainer_accuracy"] = evaluate_model(student, setup.val_loader, setup.device)
            configs.append(row)
            log(f"  sweep T={temperature} alpha={alpha}: {row}")
    kd_s = pass_s + sum(c["kd_helpers_s"] for c in configs)
    trainer_s = sum(c["trainer_s"] for c in configs)
    return {"rows": len(raw), "epochs": args.sweep_epochs, "lr": args.sweep_lr, "configs": configs,
            "teacher_pass_s": pass_s, "kd_helpers_s": kd_s, "trainer_s": trainer_s, "speedup": trainer_s / kd_s,
            "precision": precision.name(setup.bf16),
            "kd_helpers_accuracy": [c["kd_helpers_accuracy"] for c in configs],
            "trainer_accuracy": [c["trainer_accuracy"] for c in configs]}


def child(variant: str, argv: list[str], seed: int | None = None) -> dict:
    """Run one variant (for one seed) in a fresh interpreter; its last stdout line is its result."""
    extra = ["--seed", str(seed)] if seed is not None else []
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), *argv, *extra, "--variant", variant],
                          stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine_info() -> dict:
    cpu: dict[str, str] = {}
    if os.path.exists("/proc/cpuinfo"):
        for line in open("/proc/cpuinfo"):
            key, _, value = line.partition(":")
            cpu.setdefault(key.strip(), value.strip())
    bf16 = [flag for flag in cpu.get("flags", "").split() if flag in ("avx512_bf16", "amx_bf16")]
    return {"cpu_count": os.cpu_count(), "cpu_affinity": len(os.sched_getaffinity(0)),
            "cpu_model": cpu.get("model name", platform.processor()), "cpu_bf16_instructions": bf16,
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "loadavg_start": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M")}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=None, help="subsample the training split (default: all rows)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="student init and batch order, per run")
    p.add_argument("--variants", nargs="+", default=["kd_helpers", "trainer_random", "trainer_grouped"],
                   choices=VARIANTS)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=None, help="default: kd_helpers' (5e-5 base, 2e-4 compact)")
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--alpha", type=float, default=0.7, help="weight of the KL term")
    p.add_argument("--seed", type=int, default=42, help=argparse.SUPPRESS)  # one run's seed (set per child)
    p.add_argument("--data-seed", type=int, default=42, help="which rows --rows subsamples")
    p.add_argument("--student", choices=("base", "compact"), default="base")
    p.add_argument("--sweep-rows", type=int, default=None, help="rows per sweep run (default: all)")
    p.add_argument("--sweep-epochs", type=int, default=1)
    p.add_argument("--sweep-lr", type=float, default=2e-4, help="the compact student's default lr")
    p.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0])
    p.add_argument("--alphas", type=float, nargs="+", default=[0.3, 0.5, 0.7, 0.9])
    p.add_argument("--skip-sweep", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--fast", action="store_true", default=fast_mode(), help="KD_FAST teacher/splits: smoke check")
    p.add_argument("--variant", help=argparse.SUPPRESS)  # set by the parent for its subprocesses
    return p.parse_args(argv)


def summarise(runs: dict) -> dict:
    """Per variant: mean samples/s and accuracy mean ± sd over seeds."""
    out = {}
    for name, per_seed in runs.items():
        accs = [r["final_accuracy"] for r in per_seed]
        speeds = [r["samples_per_s"] for r in per_seed]
        out[name] = {"samples_per_s": sum(speeds) / len(speeds), "accuracy_mean": mean_sd(accs)[0],
                     "accuracy_sd": mean_sd(accs)[1], "accuracy": accs, "samples_per_s_each": speeds,
                     "precision": per_seed[0]["precision"]}
    return out


def main() -> None:
    args = parse_args()
    args.lr = args.lr or DEFAULT_LR[args.student]
    if args.variant:
        result = run_sweep(args) if args.variant == "sweep" else (
            {} if args.variant == "warmup" else run_variant(args.variant, args))
        print(json.dumps({**result, "peak_rss_mb": peak_rss_mb()}))
        return
    argv = sys.argv[1:]
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = machine_info()
    child("warmup", argv)  # trains and caches the teacher if needed, outside every timed process
    runs = {name: [] for name in args.variants}
    for seed in args.seeds:  # seeds outermost: drift of the machine is shared by the variants
        for name in args.variants:
            log(f"running {name}, seed {seed} ...")
            runs[name].append(child(name, argv, seed))
        fingerprints = {r[-1]["fingerprint"] for r in runs.values()}
        if len(fingerprints) != 1:
            raise SystemExit(f"error: seed {seed}: variants started from different students: {fingerprints}")
    summary = summarise(runs)
    sweep = None if args.skip_sweep else child("sweep", argv, args.seeds[0])
    machine["loadavg_end"] = os.getloadavg()
    print_report(args, machine, summary, sweep)
    trainers = {k: v for k, v in summary.items() if k.startswith("trainer") and not k.endswith("_bf16")}
    best = max(trainers, key=lambda k: trainers[k]["samples_per_s"]) if trainers else None
    kd = summary.get("kd_helpers")
    record = {"student": args.student, "epochs": args.epochs, "seeds": args.seeds, "summary": summary}
    if kd and best:
        record.update(trainer_best=best, trainer_best_samples_per_s=trainers[best]["samples_per_s"],
                      trainer_best_accuracy_mean=trainers[best]["accuracy_mean"],
                      trainer_best_accuracy_sd=trainers[best]["accuracy_sd"],
                      kd_helpers_samples_per_s=kd["samples_per_s"], kd_helpers_accuracy_mean=kd["accuracy_mean"],
                      kd_helpers_accuracy_sd=kd["accuracy_sd"], kd_helpers_precision=kd["precision"],
                      speedup_vs_trainer_best=kd["samples_per_s"] / trainers[best]["samples_per_s"])
    if kd and "reference" in summary:
        record.update(seed_loop_samples_per_s=summary["reference"]["samples_per_s"],
                      speedup=kd["samples_per_s"] / summary["reference"]["samples_per_s"])
    print(json.dumps({**record, "variants": runs, "sweep": sweep, "machine": machine,
                      "args": {k: v for k, v in vars(args).items() if k not in ("variant", "seed")},
                      "command": " ".join([os.path.relpath(__file__), *argv])}))


def print_report(args: argparse.Namespace, machine: dict, summary: dict, sweep: dict | None) -> None:
    print(f"machine: {machine['cpu_model']}, {machine['cpu_affinity']} CPUs, bf16 instructions "
          f"{machine['cpu_bf16_instructions'] or 'none'}, torch {machine['torch']}, load avg at start "
          f"{machine['loadavg_start'][0]:.2f}")
    if args.fast:
        print("WARNING: --fast / KD_FAST=1: small teacher and splits; a smoke check, not a result")
    print(f"student: {args.student}, epochs: {args.epochs}, batch {args.batch_size}, lr {args.lr}, "
          f"T={args.temperature}, alpha={args.alpha} (KL term), seeds {args.seeds}\n")
    print("| variant | precision | samples/s (mean over seeds) | validation accuracy (mean ± sd) | per seed |")
    print("|---|---|---|---|---|")
    for name, r in summary.items():
        print(f"| {name} | {r['precision']} | {r['samples_per_s']:.1f} | {100 * r['accuracy_mean']:.1f} ± "
              f"{100 * r['accuracy_sd']:.1f} % | " + ", ".join(f"{100 * a:.1f}" for a in r["accuracy"]) + " |")
    print("samples/s = rows x epochs / (training epochs + kd_helpers' one-off teacher pass); evaluation not timed")
    if sweep:
        print(f"\nsweep: {len(sweep['configs'])} configs x {sweep['epochs']} epoch(s), compact student, "
              f"{sweep['rows']} rows, lr {sweep['lr']}, seed {args.seeds[0]}")
        print(f"  kd_helpers (one teacher pass + cached logits, {sweep['precision']}): {sweep['kd_helpers_s']:.1f} s, "
              f"validation accuracy {100 * mean_sd(sweep['kd_helpers_accuracy'])[0]:.1f} % (mean over configs)")
        print(f"  Trainer pattern (live teacher, group_by_length, fp32): {sweep['trainer_s']:.1f} s, validation "
              f"accuracy {100 * mean_sd(sweep['trainer_accuracy'])[0]:.1f} % (mean over configs)")
        print(f"  speed-up {sweep['speedup']:.2f}x")


if __name__ == "__main__":
    main()
