"""Probe: does a larger share of transfer rows per batch help the KD student? (A one-off measurement.)

    HF_HUB_OFFLINE=1 python benchmarks/probe_transfer_share.py --variants 20 --share 0.75 --seeds 1 2 3

Trains the KD student exactly as ``python -m kd_helpers compare --variants 20 --methods kd`` (same steps,
schedule, seeds, initial weights) except that ``--share`` of each batch of 32 comes from the transfer rows
(``compare`` uses 0.5). Prints the final validation accuracy (what selects) and the test accuracy per seed.
Results: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import time

from kd_helpers import experiment, transfer
from kd_helpers.config import KDConfig


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variants", type=int, default=20)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--share", type=float, default=0.75)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args()
    setup = experiment.prepare(KDConfig(student="tiny"), log=lambda *_: None, progress=False)
    ts = transfer.prepare_transfer(setup, n_variants=args.variants, log=lambda *_: None)
    for seed in args.seeds:
        start = time.time()
        student, run = transfer.train_method(ts, "kd", seed, args.steps, transfer_share=args.share)
        predicted, labels = transfer.predictions(student, ts.test_loader, setup.device)
        print(f"variants={args.variants} steps={args.steps} share={args.share} seed {seed}: "
              f"validation {run.history[-1]['accuracy']:.4f} test {(predicted == labels).float().mean().item():.4f} "
              f"({time.time() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
