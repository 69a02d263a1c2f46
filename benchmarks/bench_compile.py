"""Does ``torch.compile`` pay for the student within one run? kd_helpers' loop with cached logits, compiled vs not.

    HF_HUB_OFFLINE=1 python benchmarks/bench_compile.py [--student base] [--epochs 1] [--seed 1]

Each variant runs in its own subprocess: the same rows, initial weights, loss and batches; the compiled variant's
time includes compilation (what a ``make demo`` run would pay). Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch
from transformers import get_linear_schedule_with_warmup, set_seed

from kd_helpers.config import DEFAULT_LR, KDConfig
from kd_helpers.experiment import new_student, prepare
from kd_helpers.loss import DistillationLoss
from kd_helpers.train import evaluate_model, train_epoch


def run(args) -> dict:
    setup = prepare(KDConfig(student=args.student), log=lambda *_: None, progress=False)
    student = new_student(setup, seed=args.seed)
    set_seed(args.seed)
    optimizer = torch.optim.AdamW(student.parameters(), lr=DEFAULT_LR[args.student])
    loader = setup.train_loader(seed=args.seed)
    total = args.epochs * len(loader)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(0.1 * total), total)
    model = torch.compile(student, dynamic=True) if args.variant == "compiled" else student
    epochs = []
    for _ in range(args.epochs):
        start = time.perf_counter()
        train_epoch(model, setup.cached_teacher, loader, optimizer, scheduler, DistillationLoss(), setup.device,
                    progress=False)
        epochs.append(time.perf_counter() - start)
    return {"variant": args.variant, "epoch_s": epochs, "accuracy": evaluate_model(student, setup.val_loader,
                                                                                    setup.device)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--student", default="base", choices=["base", "compact", "tiny"])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run(args)))
        return
    results = {}
    for variant in ("eager", "compiled"):
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), *sys.argv[1:], "--variant", variant],
                              stdout=subprocess.PIPE, text=True, check=True)
        results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
        r = results[variant]
        print(f"{variant:9s} epochs {[round(e, 1) for e in r['epoch_s']]} s, validation accuracy {r['accuracy']:.4f}",
              flush=True)
    ratio = sum(results["eager"]["epoch_s"]) / sum(results["compiled"]["epoch_s"])
    print(f"compiled / eager speed (compilation included): {ratio:.2f}x")
    print(json.dumps({"results": results, "speedup": ratio, "args": vars(args), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
