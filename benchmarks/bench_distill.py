"""The reference distillation loop vs kd_helpers' default path, side by side in one run (issue 6).

(a) ``reference``: the loop as written in the reference notebook: every batch padded to 128 tokens, a plain
    shuffled DataLoader, and a live teacher forward at every step (the real teacher passed to ``train_epoch``).
(b) ``kd_helpers``: dynamic padding, length-grouped batches (``Setup.train_loader``) and cached teacher
    logits; the one-off teacher pass is recomputed here (never loaded from disk) and counted in (b)'s time.

Same rows, initial student (asserted by weight fingerprint), epochs, seed, lr, AdamW + linear warm-up and
loss for both; each variant runs in its own subprocess (peak RSS per variant). A small T x alpha sweep compares
a live teacher with cached logits. Last stdout line: a JSON object. Commands: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import time

import torch
import transformers
from torch import nn
from torch.utils.data import DataLoader
from transformers import get_linear_schedule_with_warmup, set_seed

from kd_helpers import data as kd_data
from kd_helpers.config import KDConfig, fast_mode
from kd_helpers.experiment import Setup, new_student, prepare
from kd_helpers.loss import DistillationLoss
from kd_helpers.models import freeze_embeddings
from kd_helpers.train import CachedTeacher, evaluate_model, predict_logits, train_epoch

REFERENCE_MAX_LENGTH = 128  # the reference tokenises with padding="max_length", max_length=128


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)  # stdout carries only the result JSON of a child


def load_setup(args: argparse.Namespace) -> Setup:
    """The (cached) teacher and the data. ``--fast`` uses KD_FAST's small teacher and splits: smoke checks only."""
    if args.threads:
        torch.set_num_threads(args.threads)
    return prepare(KDConfig(fast=args.fast, seed=args.seed), log=log, progress=False)


def weights_fingerprint(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


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


class Bf16Student(nn.Module):
    """Runs the wrapped student's forward under CPU bf16 autocast (kd_helpers itself uses bf16 on CUDA only)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None):
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.model(**{k: v for k, v in inputs.items() if v is not None})


def train(student: nn.Module, teacher, loader, setup: Setup, args: argparse.Namespace, epochs: int,
          temperature: float, alpha: float, val_loader=None, eval_model: nn.Module | None = None) -> dict:
    """AdamW + linear warm-up, ``train_epoch`` per epoch (timed), then ``evaluate_model`` (timed apart)."""
    set_seed(args.seed)
    criterion = DistillationLoss(temperature=temperature, alpha=alpha)
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=args.lr)
    total = epochs * len(loader)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(0.1 * total), total)
    out = {"epoch_s": [], "eval_s": 0.0, "accuracy": [], "loss": []}
    for _ in range(epochs):
        start = time.perf_counter()
        losses = train_epoch(student, teacher, loader, optimizer, scheduler, criterion, setup.device, progress=False)
        out["epoch_s"].append(time.perf_counter() - start)
        out["loss"].append(losses["total_loss"])
        if val_loader is not None:
            start = time.perf_counter()
            out["accuracy"].append(evaluate_model(eval_model or student, val_loader, setup.device))
            out["eval_s"] += time.perf_counter() - start
    return out


def run_variant(name: str, args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    setup = load_setup(args)
    raw = kd_data.subsample(setup.splits["train"], args.rows, args.seed)
    student = new_student(setup, kind=args.student, seed=args.seed)
    result = {"variant": name, "rows": len(raw), "epochs": args.epochs, "fingerprint": weights_fingerprint(student),
              "setup_s": time.perf_counter() - started}
    if name == "reference":
        loader = reference_loader(raw, setup.tokenizer, args.batch_size, args.seed)
        val_loader = reference_loader(setup.splits["validation"], setup.tokenizer, 64, None)
        run = train(student, setup.teacher, loader, setup, args, args.epochs, args.temperature, args.alpha, val_loader)
        teacher_s = 0.0
    else:
        start = time.perf_counter()
        cached = teacher_pass(setup, raw)
        teacher_s = time.perf_counter() - start
        if name == "kd_helpers_freeze":
            freeze_embeddings(student)
        model = Bf16Student(student) if name == "kd_helpers_bf16" else student
        loader = with_train_rows(setup, raw).train_loader(seed=args.seed, batch_size=args.batch_size)
        run = train(model, cached, loader, setup, args, args.epochs, args.temperature, args.alpha,
                    setup.val_loader, eval_model=student)  # accuracy always in fp32
    train_s = teacher_s + sum(run["epoch_s"])
    return {**result, **run, "teacher_pass_s": teacher_s, "train_s": train_s, "wall_s": train_s + run["eval_s"],
            "samples_per_s": len(raw) * args.epochs / train_s, "final_accuracy": run["accuracy"][-1],
            "trainable_params": sum(p.numel() for p in student.parameters() if p.requires_grad),
            "torch_threads": torch.get_num_threads()}


def run_sweep(args: argparse.Namespace) -> dict:
    """The grid with a live teacher and with cached logits, config by config (interleaved, so drift is shared)."""
    setup = load_setup(args)
    raw = kd_data.subsample(setup.splits["train"], args.sweep_rows, args.seed)
    kd = with_train_rows(setup, raw)
    start = time.perf_counter()
    cached = teacher_pass(setup, raw)  # also warms up threads and kernels before the first timed config
    pass_s = time.perf_counter() - start
    configs = []
    for temperature in args.temperatures:
        for alpha in args.alphas:
            times = {}
            for mode, teacher in (("live", setup.teacher), ("cached", cached)):
                student = new_student(setup, kind="compact", seed=args.seed)
                loader = kd.train_loader(seed=args.seed, batch_size=args.batch_size)
                times[mode] = sum(train(student, teacher, loader, setup, args, 1, temperature, alpha)["epoch_s"])
            configs.append({"temperature": temperature, "alpha": alpha, **times})
    n = len(configs)
    student_s = sum(c["cached"] for c in configs) / n
    teacher_s = sum(c["live"] - c["cached"] for c in configs) / n
    return {"rows": len(raw), "configs": configs, "teacher_pass_s": pass_s,
            "live_s": sum(c["live"] for c in configs), "cached_s": pass_s + sum(c["cached"] for c in configs),
            "student_epoch_s": student_s, "teacher_forward_epoch_s": teacher_s,
            "computed_4x4x3_live_s": 16 * 3 * (student_s + teacher_s),
            "computed_4x4x3_cached_s": pass_s + 16 * 3 * student_s}


def child(variant: str, argv: list[str]) -> dict:
    """Run one variant in a fresh interpreter; its last stdout line is its result."""
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), *argv, "--variant", variant],
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
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--alpha", type=float, default=0.7, help="weight of the KL term")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--student", choices=("base", "compact"), default="base")
    p.add_argument("--sweep-rows", type=int, default=1000)
    p.add_argument("--temperatures", type=float, nargs="+", default=[2.0, 4.0])
    p.add_argument("--alphas", type=float, nargs="+", default=[0.5, 0.9])
    p.add_argument("--skip-sweep", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--bf16", action="store_true", help="extra variant: CPU bf16 autocast on the student forward")
    p.add_argument("--freeze-embeddings", action="store_true", help="extra variant: frozen student embeddings")
    p.add_argument("--fast", action="store_true", default=fast_mode(), help="KD_FAST teacher/splits: smoke check")
    p.add_argument("--variant", help=argparse.SUPPRESS)  # set by the parent for its subprocesses
    return p.parse_args(argv)


def main() -> None:
    args = parse_args()
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
    names = ["reference", "kd_helpers"]
    names += ["kd_helpers_bf16"] * args.bf16 + ["kd_helpers_freeze"] * args.freeze_embeddings
    runs = {}
    for name in names:
        log(f"running {name} ...")
        runs[name] = child(name, argv)
    fingerprints = {r["fingerprint"] for r in runs.values()}
    if len(fingerprints) != 1:
        raise SystemExit(f"error: variants started from different students: {fingerprints}")
    ref, kd = runs["reference"], runs["kd_helpers"]
    sweep = None if args.skip_sweep else child("sweep", argv)
    machine["loadavg_end"] = os.getloadavg()
    print_report(args, machine, runs, sweep)
    print(json.dumps({
        "seed_loop_samples_per_s": ref["samples_per_s"], "kd_helpers_samples_per_s": kd["samples_per_s"],
        "seed_loop_accuracy": ref["final_accuracy"], "kd_helpers_accuracy": kd["final_accuracy"],
        "speedup": kd["samples_per_s"] / ref["samples_per_s"],
        "accuracy_diff_points": 100 * (kd["final_accuracy"] - ref["final_accuracy"]),
        "student_fingerprint": fingerprints.pop(), "variants": runs, "sweep": sweep, "machine": machine,
        "args": {k: v for k, v in vars(args).items() if k != "variant"},
        "command": " ".join([os.path.relpath(__file__), *argv])}))


def print_report(args: argparse.Namespace, machine: dict, runs: dict, sweep: dict | None) -> None:
    print(f"machine: {machine['cpu_model']}, {machine['cpu_affinity']} CPUs, torch {machine['torch']} "
          f"({runs['reference']['torch_threads']} threads), load avg at start {machine['loadavg_start'][0]:.2f}")
    if args.fast:
        print("WARNING: --fast / KD_FAST=1: small teacher and splits; a smoke check, not a result")
    print(f"student: {args.student}, rows: {runs['reference']['rows']}, epochs: {args.epochs}, "
          f"batch {args.batch_size}, lr {args.lr}, T={args.temperature}, alpha={args.alpha} (KL term)\n")
    print(f"{'variant':<18} {'samples/s':>10} {'train s':>9} {'teacher s':>9} {'wall s':>8} {'peak MB':>8} "
          f"{'val acc':>8}")
    for name, r in runs.items():
        print(f"{name:<18} {r['samples_per_s']:>10.1f} {r['train_s']:>9.1f} {r['teacher_pass_s']:>9.1f} "
              f"{r['wall_s']:>8.1f} {r['peak_rss_mb']:>8.0f} {r['final_accuracy']:>8.4f}")
    ref, kd = runs["reference"], runs["kd_helpers"]
    print(f"\nspeedup (samples/s): {kd['samples_per_s'] / ref['samples_per_s']:.2f}x; accuracy difference: "
          f"{100 * (kd['final_accuracy'] - ref['final_accuracy']):+.2f} points")
    print("train s = training epochs (+ the one-off teacher pass for kd_helpers); wall s adds per-epoch evaluation")
    if sweep:
        print(f"\nsweep: {len(sweep['configs'])} config(s) x 1 epoch, compact student, {sweep['rows']} rows (measured)")
        print(f"  live teacher:  {sweep['live_s']:.1f} s")
        print(f"  cached logits: {sweep['cached_s']:.1f} s (incl. one teacher pass of {sweep['teacher_pass_s']:.1f} s)")
        s, t, p = sweep["student_epoch_s"], sweep["teacher_forward_epoch_s"], sweep["teacher_pass_s"]
        print(f"4 x 4 grid x 3 epochs at {sweep['rows']} rows: COMPUTED from the measured per-epoch times:")
        print(f"  student epoch s = {s:.2f}, teacher forward per epoch t = mean(live - cached) = {t:.2f}, "
              f"teacher pass p = {p:.2f}")
        print(f"  live   = 16 x 3 x (s + t) = {sweep['computed_4x4x3_live_s']:.1f} s")
        print(f"  cached = p + 16 x 3 x s   = {sweep['computed_4x4x3_cached_s']:.1f} s")


if __name__ == "__main__":
    main()
