"""Probe: does a wider factorised embedding help the tiny student? (A one-off measurement, not a package command.)

    HF_HUB_OFFLINE=1 python benchmarks/probe_tiny_embedding.py --embedding-size 80 --variants 20 --seeds 1 2 3

The tiny student keeps 30,522 word vectors of ``embedding_size`` numbers (64 by default: 3.9 M parameters, 17 % of
the teacher). The issue allows up to 1/5 of the teacher's parameters; 80 gives about 19.5 %. Everything else is
``python -m kd_helpers compare --variants 20``'s KD (and, with ``--methods kd ce``, CE-only) student: same
batches, schedule, seeds. Prints the parameter count, the final validation accuracy (what selects) and the test
accuracy per seed. Results: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import functools
import time

from kd_helpers import experiment, models, transfer
from kd_helpers.config import KDConfig


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--embedding-size", type=int, default=80)
    parser.add_argument("--variants", type=int, default=20)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--methods", nargs="+", default=["kd"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args()
    setup = experiment.prepare(KDConfig(student="tiny"), log=lambda *_: None, progress=False)
    tiny = functools.partial(models.make_tiny_student, embedding_size=args.embedding_size)
    experiment.make_student = lambda base, kind, seed: tiny(base, seed=seed)  # new_student builds this one
    student = experiment.new_student(setup, kind="tiny", seed=1)
    print(f"embedding_size={args.embedding_size}: {models.count_parameters(student):,} parameters "
          f"({models.count_parameters(student) / models.count_parameters(setup.teacher):.1%} of the teacher)",
          flush=True)
    ts = transfer.prepare_transfer(setup, n_variants=args.variants, log=lambda *_: None)
    for method in args.methods:
        for seed in args.seeds:
            start = time.time()
            student, run = transfer.train_method(ts, method, seed, args.steps)
            predicted, labels = transfer.predictions(student, ts.test_loader, setup.device)
            print(f"embedding_size={args.embedding_size} {method} seed {seed}: validation "
                  f"{run.history[-1]['accuracy']:.4f} test {(predicted == labels).float().mean().item():.4f} "
                  f"({time.time() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
