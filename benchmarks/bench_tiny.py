"""The tiny student: which initialisation learns best, and how much faster than the teacher it runs.

    HF_HUB_OFFLINE=1 python benchmarks/bench_tiny.py [--inits base teacher random] [--seeds 1 2 3]
                                                     [--steps 800] [--fraction 0.1]

Initialisations: ``base`` (kd_helpers' default: factorised embeddings, layer 0 and pooler copied from the
pre-trained MiniLM), ``teacher`` (the same, copied from the fine-tuned teacher) and ``random``. For each: KD +
transfer set and CE-only, the same steps and seeds, test accuracy (mean ± sd). Then CPU throughput at batch 32
(``torch.utils.benchmark``, median) of the tiny student vs the teacher. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json

import torch

from kd_helpers import experiment, models, transfer
from kd_helpers.config import KDConfig
from kd_helpers.metrics import latency
from kd_helpers.stats import fmt_mean_sd


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--inits", nargs="+", default=["base", "teacher", "random"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--fraction", type=float, default=0.1)
    args = parser.parse_args()
    setup = experiment.prepare(KDConfig(student="tiny"), log=lambda *_: None, progress=False)
    ts = transfer.prepare_transfer(setup, fraction=args.fraction, log=lambda *_: None)
    sources = {"base": setup.base, "teacher": setup.teacher}
    results = {}
    for init in args.inits:
        def make(base, kind="tiny", seed=42, init=init):
            return models.make_tiny_student(sources.get(init, setup.base), seed=seed,
                                            init="random" if init == "random" else "base")

        original, experiment.make_student = experiment.make_student, make
        try:
            comparison = transfer.compare_methods(ts, args.seeds, args.steps, methods=("kd", "ce"),
                                                  log=lambda *_: None)
        finally:
            experiment.make_student = original
        results[init] = {m: comparison["methods"][m]["test_accuracy"] for m in ("kd", "ce")}
        print(f"init={init:8s} KD {fmt_mean_sd(results[init]['kd'])}  CE-only {fmt_mean_sd(results[init]['ce'])}  "
              f"(test, seeds {args.seeds}, {args.steps} steps, {args.fraction:.0%} labels)", flush=True)
    texts = setup.splits["test"]["text"]
    batch1 = setup.tokenizer(texts[:1], return_tensors="pt")
    batch32 = setup.tokenizer(texts[:32], return_tensors="pt", padding=True)
    tiny = experiment.new_student(setup, kind="tiny", seed=1)
    speed = {name: latency(model, batch1, batch32) for name, model in (("tiny", tiny), ("teacher", setup.teacher))}
    ratio = speed["tiny"]["throughput_batch32"] / speed["teacher"]["throughput_batch32"]
    print(f"throughput at batch 32 (threads {torch.get_num_threads()}): tiny {speed['tiny']['throughput_batch32']:.0f}"
          f" rows/s, teacher {speed['teacher']['throughput_batch32']:.0f} rows/s -> {ratio:.1f}x")
    print(json.dumps({"inits": results, "speed": speed, "throughput_ratio": ratio, "steps": args.steps,
                      "fraction": args.fraction, "seeds": args.seeds}))


if __name__ == "__main__":
    main()
