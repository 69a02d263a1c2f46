"""Where the compact student's time goes with kd_helpers' defaults, and what two candidate savings would cost.

1. The one-off teacher pass over the training rows: fp32 (the default: inference is fp32 everywhere) against the
   same pass under bf16 autocast (not a default; timed only, its logits are not used).
2. A ``torch.profiler`` table of 40 training steps (fused AdamW, bf16 autocast on a CPU with bf16 instructions):
   which operators take the time, with the whole word table trained (the default before 2026-12-06, afternoon) and
   with only the rows the training rows use (``seen_rows.seen_rows_only``, the default since).
3. ``--freeze-seeds``: the student trained 3 epochs (the benchmark's schedule, cached logits) with every weight
   trainable (the default way: only the word rows the training rows use get updates), and with its word-embedding
   table frozen (its gradient and AdamW update are a large share of a
   step), validation accuracy per epoch and seconds.

``HF_HUB_OFFLINE=1 python benchmarks/probe_compact_step.py --freeze-seeds 1 2 3`` (output: probe_compact_step.out).
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_distill as bd  # noqa: E402  (the benchmark's setup, teacher pass and training schedule)

from kd_helpers import data as kd_data  # noqa: E402
from kd_helpers import precision  # noqa: E402
from kd_helpers.config import DEFAULT_LR  # noqa: E402
from kd_helpers.experiment import new_student  # noqa: E402
from kd_helpers.loss import DistillationLoss  # noqa: E402
from kd_helpers.precision import train_autocast  # noqa: E402
from kd_helpers.seen_rows import seen_rows_only  # noqa: E402
from kd_helpers.train import make_optimizer, model_inputs  # noqa: E402


def timed_teacher_pass(setup, raw, bf16: bool) -> float:
    start = time.perf_counter()
    if bf16:
        _bf16_pass(setup, raw)
    else:
        bd.teacher_pass(setup, raw)
    return time.perf_counter() - start


def _bf16_pass(setup, raw) -> None:
    """The teacher pass's forwards under bf16 autocast (``predict_logits`` forces fp32, so this loop is its own)."""
    tokenizer = setup.teacher_tokenizer
    loader = kd_data.make_loader(kd_data.tokenize(raw, tokenizer, setup.config.max_length), tokenizer, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for batch in loader:
            setup.teacher(**model_inputs(setup.teacher, batch, setup.device))


def profile_steps(setup, seen_rows: bool, steps: int = 40) -> str:
    student = new_student(setup, kind="compact", seed=1)
    loader = setup.train_loader(seed=1, batch_size=32)
    # follow(optimizer) is left out here: its weight-decay bookkeeping is one Python multiplication per step
    with seen_rows_only(student, loader) if seen_rows else nullcontext():
        return _profile(student, list(loader)[: steps + 10], setup)


def _profile(student, batches, setup) -> str:
    optimizer = make_optimizer([p for p in student.parameters() if p.requires_grad], 2e-4)
    criterion = DistillationLoss(4.0, 0.7)
    student.train()

    def step(batch):
        with train_autocast(setup.device, setup.bf16):
            logits = student(**model_inputs(student, batch, setup.device)).logits.float()
        total, _, _ = criterion(logits, torch.zeros_like(logits), batch["labels"])
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()

    for batch in batches[:10]:  # warm-up
        step(batch)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for batch in batches[10:]:
            step(batch)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--freeze-seeds", type=int, nargs="*", default=[])
    cli = p.parse_args()
    args = bd.parse_args(["--student", "compact", "--epochs", "3"])
    args.lr = DEFAULT_LR["compact"]
    setup = bd.load_setup(args)
    raw = setup.splits["train"]
    print(f"precision of training forwards: {precision.name(setup.bf16)}; rows {len(raw)}")
    timed_teacher_pass(setup, raw, False)  # warm-up
    for bf16 in (False, True, False, True):
        print(f"teacher pass over the training rows, {'bf16 autocast' if bf16 else 'fp32'}: "
              f"{timed_teacher_pass(setup, raw, bf16):.2f} s", flush=True)
    for seen_rows in (False, True):
        rows = "only the word rows the training rows use" if seen_rows else "the whole word table"
        print(f"\n40 training steps of the compact student (fused AdamW, default precision), {rows}:")
        print(profile_steps(setup, seen_rows), flush=True)
    if not cli.freeze_seeds:
        return
    cached = bd.teacher_pass(setup, raw)
    rows = bd.with_train_rows(setup, raw)
    print("| student | seed | 3 epochs (s) | validation accuracy per epoch |\n|---|---|---|---|")
    for seed in cli.freeze_seeds:
        for frozen in (False, True):
            args.seed = seed
            student = new_student(setup, kind="compact", seed=seed)
            if frozen:
                student.base_model.embeddings.word_embeddings.weight.requires_grad_(False)
            loader = rows.train_loader(seed=seed, batch_size=args.batch_size)
            run = bd.train(student, cached, loader, setup, args, 3, args.temperature, args.alpha, setup.val_loader,
                           bf16=setup.bf16)
            name = "word table frozen" if frozen else "all trainable"
            print(f"| {name} | {seed} | {sum(run['epoch_s']):.1f} | "
                  + ", ".join(f"{100 * a:.1f}" for a in run["accuracy"]) + " % |", flush=True)


if __name__ == "__main__":
    main()
