"""Probe: does notebook 05's feature loss add to KD + transfer set? (A one-off measurement, not a package command.)

    HF_HUB_OFFLINE=1 python benchmarks/probe_kd_features.py --variants 20 --steps 2000 --seeds 1 2 3

The tiny student trains exactly as ``python -m kd_helpers compare --variants 20``'s KD student (the same mixed
batches of labelled and transfer rows, schedule, seeds), plus the hidden-state MSE (through a learned projection)
and the attention KL against a *live* teacher (the transfer set is too large to cache its states). Prints the test
accuracy per seed; compare it with ``compare``'s KD student of the same seeds. Results: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import DataLoader
from transformers import get_linear_schedule_with_warmup, set_seed

from kd_helpers import experiment, transfer
from kd_helpers.config import KDConfig
from kd_helpers.features import (
    FeatureWeights,
    HiddenProjection,
    feature_step,
    layer_map,
    live_teacher_features,
    use_eager_attention,
)
from kd_helpers.loss import DistillationLoss


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variants", type=int, default=20)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--hidden-weight", type=float, default=1.0)
    parser.add_argument("--attention-weight", type=float, default=1.0)
    args = parser.parse_args()
    setup = experiment.prepare(KDConfig(student="tiny"), log=lambda *_: None, progress=False)
    ts = transfer.prepare_transfer(setup, n_variants=args.variants, log=lambda *_: None)
    teacher = use_eager_attention(setup.teacher)
    pairs = layer_map(1, 6)
    lengths = [len(ids) for ids in ts.pool["input_ids"]]
    for seed in args.seeds:
        start = time.time()
        accuracy = train_and_test(setup, ts, teacher, pairs, lengths, seed, args)
        print(f"variants={args.variants} steps={args.steps} hidden={args.hidden_weight} "
              f"attention={args.attention_weight} seed {seed}: test {accuracy:.4f} ({time.time() - start:.0f} s)",
              flush=True)


def train_and_test(setup, ts, teacher, pairs, lengths, seed, args) -> float:
    batches = transfer.mixed_batches(ts.labelled_ids, ts.transfer_ids, lengths, 32, args.steps, 0.5, seed)
    student = use_eager_attention(experiment.new_student(setup, kind="tiny", seed=seed))
    projection = HiddenProjection(384, 384, len(pairs))
    set_seed(seed)
    params = [p for p in student.parameters() if p.requires_grad] + list(projection.parameters())
    optimizer = torch.optim.AdamW(params, lr=setup.config.lr)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(0.1 * args.steps), args.steps)
    criterion = DistillationLoss(4.0, 0.7)
    collate = transfer._Collate(setup.tokenizer, ts.labels["kd"])
    student.train()
    weights = FeatureWeights(hidden=args.hidden_weight, attention=args.attention_weight)
    for batch in DataLoader(ts.pool, batch_sampler=batches, collate_fn=collate):
        hidden, attention = live_teacher_features(teacher, batch, pairs, setup.device)
        total, _ = feature_step(student, batch, ts.teacher(batch), hidden, attention, criterion, weights, pairs,
                                projection, setup.device)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        scheduler.step()
    predicted, labels = transfer.predictions(student, ts.test_loader, setup.device)
    return (predicted == labels).float().mean().item()


if __name__ == "__main__":
    main()
