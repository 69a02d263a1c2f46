"""Length grouping that does not hurt learning: random batches vs chunked grouping vs a global length sort.

    HF_HUB_OFFLINE=1 python benchmarks/bench_batching.py [--students compact base] [--epochs 1] [--seeds 1 2 3]

For each student, seed and batching: a fresh student (same initial weights per seed), KD with cached teacher
logits (T = 4, alpha = 0.7), the default learning rate, validation accuracy after each epoch, wall time, and the
padded tokens the batches carry. Batchings: ``random`` (plain shuffle), ``chunked`` (kd_helpers' default:
shuffle, sort within chunks of 8 batches, shuffle the batches) and ``global`` (transformers'
``LengthGroupedSampler``, the previous default: mega-batches sorted longest first). Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding
from transformers.trainer_pt_utils import LengthGroupedSampler

from kd_helpers import experiment
from kd_helpers.config import KDConfig
from kd_helpers.data import CHUNK_BATCHES, ChunkedLengthSampler
from kd_helpers.train import distill


def loader(setup, batching: str, seed: int) -> DataLoader:
    data, cfg = setup.train_set, setup.config
    collate = DataCollatorWithPadding(setup.tokenizer, return_tensors="pt")
    lengths = [len(ids) for ids in data["input_ids"]]
    if batching == "global":
        sampler = LengthGroupedSampler(cfg.batch_size, lengths=lengths, generator=torch.Generator().manual_seed(seed))
        return DataLoader(data, batch_size=cfg.batch_size, sampler=sampler, collate_fn=collate)
    chunk = CHUNK_BATCHES if batching == "chunked" else 1
    sampler = ChunkedLengthSampler(lengths, cfg.batch_size, chunk, seed)
    return DataLoader(data, batch_sampler=sampler, collate_fn=collate)


def padded_tokens(batches_loader) -> int:
    return sum(int(batch["input_ids"].numel()) for batch in batches_loader)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--students", nargs="+", default=["compact"])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--batchings", nargs="+", default=["random", "chunked", "global"])
    args = parser.parse_args()
    rows = []
    for kind in args.students:
        setup = experiment.prepare(KDConfig(student=kind, epochs=args.epochs), log=lambda *_: None, progress=False)
        for batching in args.batchings:
            for seed in args.seeds:
                train_loader = loader(setup, batching, seed)
                tokens = padded_tokens(loader(setup, batching, seed))
                student = experiment.new_student(setup, seed=seed)
                torch.manual_seed(seed)
                start = time.perf_counter()
                run = distill(student, setup.cached_teacher, train_loader, setup.val_loader, setup.device,
                              epochs=args.epochs, lr=setup.config.lr, verbose=False, progress=False)
                seconds = time.perf_counter() - start
                accuracy = [h["accuracy"] for h in run.history]
                rows.append({"student": kind, "batching": batching, "seed": seed, "accuracy": accuracy,
                             "seconds": round(seconds, 1), "padded_tokens_epoch1": tokens})
                print(f"{kind:8s} {batching:8s} seed {seed}: accuracy per epoch "
                      + ", ".join(f"{a:.4f}" for a in accuracy) + f"; {seconds:.1f} s; {tokens:,} padded tokens",
                      flush=True)
    print("\n| student | batching | accuracy after epoch 1 (mean ± sd; per seed) | last epoch | s per run | tokens |")
    print("|---|---|---|---|---|---|")
    for kind in args.students:
        for batching in args.batchings:
            group = [r for r in rows if r["student"] == kind and r["batching"] == batching]
            first, last = [r["accuracy"][0] for r in group], [r["accuracy"][-1] for r in group]
            sd = statistics.stdev(first) if len(first) > 1 else 0.0
            print(f"| {kind} | {batching} | {100 * statistics.mean(first):.1f} ± {100 * sd:.1f} % ("
                  + ", ".join(f"{100 * a:.1f}" for a in first) + f") | {100 * statistics.mean(last):.1f} % | "
                  f"{statistics.mean(r['seconds'] for r in group):.1f} | {group[0]['padded_tokens_epoch1']:,} |")
    print(json.dumps({"epochs": args.epochs, "runs": rows}))


if __name__ == "__main__":
    main()
