"""Command line: ``python -m kd_helpers distill`` (the main job) and ``python -m kd_helpers evaluate``.

Bad input ends with one ``error: ...`` line on stderr and exit code 2; Ctrl-C saves what finished and exits 130.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from kd_helpers.config import PRESETS, STUDENTS, KDConfig, fast_mode
from kd_helpers.errors import KDError, NonFiniteLossError

EXIT_BAD_INPUT, EXIT_INTERRUPTED = 2, 130
COLUMNS = [("teacher", "Teacher"), ("student_before", "Student before"), ("student_kd", "Student after (KD)"),
           ("student_ce", "Student CE-only"), ("student_kd_int8", "KD student int8")]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        print(f"error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m kd_helpers", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    d = commands.add_parser("distill", help="teacher -> student distillation, with a CE-only baseline")
    d.add_argument("--preset", choices=PRESETS, default="minilm",
                   help="minilm: offline default (bundled MiniLM, embedded corpus); distilbert-sst2: the hub")
    d.add_argument("--student", choices=STUDENTS, default="base",
                   help="base: same architecture as the teacher; compact: 2 layers of the base")
    d.add_argument("--data", default=None, help="reviews (default), sst2, or a CSV/TSV/JSONL file or folder")
    d.add_argument("--teacher", default=None, help="a fine-tuned teacher (model id or folder) instead of the preset's")
    d.add_argument("--temperature", type=float, default=4.0)
    d.add_argument("--alpha", type=float, default=0.7, help="weight of the KL (teacher) term; 1-alpha weights CE")
    d.add_argument("--epochs", type=int, default=3)
    d.add_argument("--batch-size", type=int, default=32)
    d.add_argument("--lr", type=float, default=None, help="student learning rate (default: 5e-5 base, 2e-4 compact)")
    d.add_argument("--max-length", type=int, default=64)
    d.add_argument("--seed", type=int, default=42)
    d.add_argument("--output-dir", default="outputs")
    d.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, mps")
    d.add_argument("--fast", action="store_true", help="small subset, 1 epoch, compact student (also KD_FAST=1)")
    d.add_argument("--no-baseline", action="store_true", help="skip the CE-only student")

    e = commands.add_parser("evaluate", help="accuracy of a saved model on a data file")
    e.add_argument("--model", required=True, help="a folder saved by distill (e.g. outputs/student)")
    e.add_argument("--data", required=True, help="a CSV/TSV/JSONL file with text and label columns")
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--max-length", type=int, default=128)
    e.add_argument("--json", action="store_true", help="end with one JSON line: accuracy, n")
    s = commands.add_parser("sweep", help="temperature x alpha grid (+ the alpha=0 baseline), cached and resumable")
    s.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0])
    s.add_argument("--alphas", type=float, nargs="+", default=[0.3, 0.5, 0.7, 0.9])
    s.add_argument("--epochs", type=int, default=2, help="2 keeps the full 4 x 4 sweep near 15 minutes on 2 cores")
    s.add_argument("--student", choices=STUDENTS, default="compact")
    s.add_argument("--results", default=None, help="results JSON (default: the one notebook 04 ships with)")
    s.add_argument("--fast", action="store_true", help="small subset, 1 epoch (also KD_FAST=1)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "sweep":
            from kd_helpers.sweep import cmd_sweep

            return cmd_sweep(args)
        return cmd_distill(args) if args.command == "distill" else cmd_evaluate(args)
    except KDError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except NonFiniteLossError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def cmd_distill(args) -> int:
    from kd_helpers.experiment import run_experiment

    config = KDConfig(preset=args.preset, student=args.student, data=args.data, teacher=args.teacher,
                      temperature=args.temperature, alpha=args.alpha, epochs=args.epochs,
                      batch_size=args.batch_size, lr=args.lr, max_length=args.max_length, seed=args.seed,
                      output_dir=args.output_dir, device=args.device, fast=args.fast or fast_mode(),
                      baseline=not args.no_baseline)
    print(f"kd_helpers distill: preset={config.preset} student={config.student} data={config.data} "
          f"mode={'fast' if config.fast else 'full'}")
    results = run_experiment(config)
    print()
    print(format_table(results))
    print(f"\nSaved {os.path.join(config.output_dir, 'results.json')}"
          + ("" if results["interrupted"] else f" and {os.path.join(config.output_dir, 'student')}/"))
    return EXIT_INTERRUPTED if results["interrupted"] else 0


def cmd_evaluate(args) -> int:
    from kd_helpers.data import load_table, make_loader, tokenize
    from kd_helpers.models import load_classifier, load_tokenizer
    from kd_helpers.train import evaluate_model

    if args.batch_size < 1:
        raise KDError(f"--batch-size {args.batch_size}: must be an integer >= 1")
    if args.max_length < 8:
        raise KDError(f"--max-length {args.max_length}: must be >= 8")
    model = load_classifier(args.model, num_labels=None)
    tokenizer = load_tokenizer(args.model)
    table = load_table(args.data, num_classes=model.config.num_labels)
    loader = make_loader(tokenize(table, tokenizer, args.max_length), tokenizer, args.batch_size)
    import torch

    accuracy = evaluate_model(model, loader, torch.device("cpu"))
    print(f"accuracy: {accuracy:.4f} on {len(table)} rows of {args.data}")
    if args.json:
        print(json.dumps({"accuracy": accuracy, "n": len(table), "model": args.model, "data": args.data}))
    return 0


def format_table(results: dict) -> str:
    """The four headline accuracies first, then every metric per model (Markdown)."""
    head = ["Teacher", "Student before", "Student after (KD)", "Student CE-only"]
    keys = ["teacher_accuracy", "student_before_accuracy", "student_after_accuracy", "baseline_accuracy"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
             "| " + " | ".join(_pct(results.get(k)) for k in keys) + " |"]
    models = results.get("models")
    if models:
        names = [(key, title) for key, title in COLUMNS if key in models]
        rows = [("accuracy", "accuracy", _pct), ("agreement_with_teacher", "agreement with teacher", _pct),
                ("ece", "ECE (15 bins)", lambda v: f"{v:.3f}"), ("nll", "NLL", lambda v: f"{v:.3f}"),
                ("params", "parameters", lambda v: f"{v / 1e6:.1f} M"), ("size_mb", "size", lambda v: f"{v:.1f} MB"),
                ("latency_ms_batch1", "latency, batch 1 (CPU)", lambda v: f"{v:.1f} ms"),
                ("throughput_batch32", "throughput, batch 32 (CPU)", lambda v: f"{v:.0f} rows/s")]
        lines += ["", "| metric | " + " | ".join(title for _, title in names) + " |", "|---|" + "---|" * len(names)]
        for key, label, fmt in rows:
            lines.append(f"| {label} | " + " | ".join(fmt(models[name][key]) for name, _ in names) + " |")
    return "\n".join(lines)


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


if __name__ == "__main__":
    raise SystemExit(main())
