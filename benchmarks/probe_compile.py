"""Probe: does ``torch.compile`` pay for the student's training within one run? (A one-off measurement.)

    HF_HUB_OFFLINE=1 python benchmarks/probe_compile.py --student compact --epochs 3

The same student, seed, batches (the default chunked length grouping), optimizer and schedule as ``make demo``'s
distillation with cached teacher logits, once eager and once with ``student.compile(dynamic=True)`` (Inductor on
the CPU; dynamic shapes because dynamic padding gives every batch its own length). Prints each epoch's wall time
(the first compiled epoch includes compilation) and the final validation accuracy. Results: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from transformers import get_linear_schedule_with_warmup

from kd_helpers import experiment
from kd_helpers.config import KDConfig
from kd_helpers.loss import DistillationLoss
from kd_helpers.train import evaluate_model, train_epoch


def run(setup, compiled: bool, epochs: int, seed: int) -> dict:
    student = experiment.new_student(setup, seed=seed)
    if compiled:
        student.compile(dynamic=True)
    cfg = setup.config
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=cfg.lr)
    steps = epochs * len(setup.train_loader(seed=seed))
    scheduler = get_linear_schedule_with_warmup(optimizer, int(0.1 * steps), steps)
    criterion = DistillationLoss(cfg.temperature, cfg.alpha)
    seconds = []
    for epoch in range(epochs):
        start = time.perf_counter()
        train_epoch(student, setup.cached_teacher, setup.train_loader(seed=seed + epoch), optimizer, scheduler,
                    criterion, setup.device, progress=False)
        seconds.append(round(time.perf_counter() - start, 1))
    return {"epoch_seconds": seconds, "accuracy": evaluate_model(student, setup.val_loader, setup.device),
            "rows": len(setup.train_set)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--student", default="compact", choices=["base", "compact", "tiny"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    setup = experiment.prepare(KDConfig(student=args.student), log=lambda *_: None, progress=False)
    results = {}
    for name, compiled in (("eager", False), ("compiled", True)):
        results[name] = run(setup, compiled, args.epochs, args.seed)
        r = results[name]
        print(f"{args.student} {name:8s}: epochs {r['epoch_seconds']} s, total {sum(r['epoch_seconds']):.1f} s, "
              f"validation accuracy {r['accuracy']:.4f}", flush=True)
    print(json.dumps({"student": args.student, "epochs": args.epochs, "seed": args.seed, **results}))


if __name__ == "__main__":
    main()
