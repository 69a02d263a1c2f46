"""A stronger teacher? Three teachers from different seeds, alone and as an ensemble (mean logits), and what
each gives the tiny student (KD + transfer set, all labels) on the test split.

    HF_HUB_OFFLINE=1 python benchmarks/bench_teacher.py [--teacher-seeds 42 43 44] [--seeds 1 2 3] [--steps 2000]

Each teacher uses kd_helpers' recipe (MiniLM, 3 epochs, lr 1e-4, batch 32; seed 42 is the default teacher) and
is cached like it. The ensemble's soft targets are the mean of its members' logits. Students: the tiny student,
KD from the single default teacher, KD from the ensemble, and CE-only, the same steps, rows, initial weights and
seeds (``kd_helpers.transfer``). Paired tests (McNemar, pooled over seeds; paired bootstrap of the difference) on
the same test rows. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

from kd_helpers import data as kd_data
from kd_helpers import experiment, stats, transfer
from kd_helpers.config import KDConfig
from kd_helpers.models import freeze
from kd_helpers.teacher import TeacherEnsemble, cached_teacher_logits, train_teacher
from kd_helpers.train import evaluate_model


def accuracy(model, split, tokenizer, cfg, device) -> float:
    loader = kd_data.make_loader(kd_data.tokenize(split, tokenizer, cfg.max_length), tokenizer, 64)
    return evaluate_model(model, loader, device)


def run_students(ts, seeds, steps, method, log) -> list:
    correct = []
    for seed in seeds:
        start = time.perf_counter()
        student, _ = transfer.train_method(ts, method, seed, steps)
        predicted, labels = transfer.predictions(student, ts.test_loader, ts.setup.device)
        correct.append((predicted == labels).numpy())
        log(f"  {method} seed {seed}: test {correct[-1].mean():.4f} ({time.perf_counter() - start:.0f} s)")
    return correct


def versus(a: list, b: list) -> dict:
    import numpy as np

    return {"difference": float(np.mean(a) - np.mean(b)), "pooled_mcnemar_p": stats.pooled_mcnemar(
        list(zip(a, b, strict=True)))["p_value"],
            "bootstrap": stats.paired_bootstrap(np.mean(a, axis=0), np.mean(b, axis=0))}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--teacher-seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args()

    def log(*a):
        print(*a, flush=True)

    setup = experiment.prepare(KDConfig(student="tiny"), log=log, progress=False)
    cfg, device = setup.config, setup.device
    base_source, _ = experiment.sources(cfg)
    teachers, report = [], {"teachers": {}}
    for seed in args.teacher_seeds:
        start = time.perf_counter()
        model, tokenizer, info = train_teacher(base_source, setup.splits["train"], epochs=cfg.teacher_epochs,
                                               lr=cfg.teacher_lr, batch_size=cfg.batch_size,
                                               max_length=cfg.max_length, seed=seed, device=device, progress=False,
                                               log=log)
        teachers.append(freeze(model).to(device))
        report["teachers"][seed] = {
            "validation": accuracy(model, setup.splits["validation"], tokenizer, cfg, device),
            "test": accuracy(model, setup.splits["test"], tokenizer, cfg, device),
            "seconds": round(time.perf_counter() - start, 1), "cached": info["cached"]}
        log(f"teacher seed {seed}: {report['teachers'][seed]}")
    ensemble = TeacherEnsemble(teachers).eval()
    tokenizer = setup.teacher_tokenizer
    report["ensemble"] = {"validation": accuracy(ensemble, setup.splits["validation"], tokenizer, cfg, device),
                          "test": accuracy(ensemble, setup.splits["test"], tokenizer, cfg, device)}
    log(f"ensemble of {len(teachers)}: {report['ensemble']}")

    single_ts = transfer.prepare_transfer(setup, fraction=1.0, log=log)
    cached = cached_teacher_logits(ensemble, tokenizer, setup.splits["train"], cfg.max_length, device=device, log=log)
    ens_setup = dataclasses.replace(setup, teacher=ensemble, cached_teacher=cached)
    ens_ts = transfer.prepare_transfer(ens_setup, fraction=1.0, log=log)
    correct = {"kd_single": run_students(single_ts, args.seeds, args.steps, "kd", log),
               "kd_ensemble": run_students(ens_ts, args.seeds, args.steps, "kd", log),
               "ce": run_students(single_ts, args.seeds, args.steps, "ce", log)}
    report["students"] = {name: [float(c.mean()) for c in rows] for name, rows in correct.items()}
    report["tests"] = {"kd_ensemble_vs_kd_single": versus(correct["kd_ensemble"], correct["kd_single"]),
                       "kd_ensemble_vs_ce": versus(correct["kd_ensemble"], correct["ce"]),
                       "kd_single_vs_ce": versus(correct["kd_single"], correct["ce"])}
    print()
    print("| teacher | validation | test |\n|---|---|---|")
    for seed, r in report["teachers"].items():
        print(f"| seed {seed} | {100 * r['validation']:.1f} % | {100 * r['test']:.1f} % |")
    print(f"| ensemble (mean logits) | {100 * report['ensemble']['validation']:.1f} % | "
          f"{100 * report['ensemble']['test']:.1f} % |")
    print(f"\nTiny student, all labels, {args.steps} steps, seeds {args.seeds}, test split:")
    for name, accs in report["students"].items():
        print(f"  {name:12s} {stats.fmt_mean_sd(accs)}  per seed " + ", ".join(f"{100 * a:.1f}" for a in accs))
    for name, t in report["tests"].items():
        b = t["bootstrap"]
        print(f"  {name}: {100 * t['difference']:+.1f} points [{100 * b['low']:+.1f}, {100 * b['high']:+.1f}], "
              f"pooled McNemar p = {t['pooled_mcnemar_p']:.2g}")
    report.update(seeds=args.seeds, steps=args.steps, threads=torch.get_num_threads())
    print(json.dumps(report))


if __name__ == "__main__":
    main()
