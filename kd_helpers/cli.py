"""Command line: ``python -m kd_helpers distill`` (the main job) and ``python -m kd_helpers evaluate``.

Bad input ends with one ``error: ...`` line on stderr and exit code 2; Ctrl-C saves what finished and exits 130.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from kd_helpers.config import STUDENTS, KDConfig
from kd_helpers.errors import KDError, NonFiniteLossError

SWEEP_SEEDS, SWEEP_STEPS, SWEEP_FRACTION = (1, 2, 3), 800, 0.1  # kd_helpers.sweep's defaults (asserted in tests)
COMPARE_STEPS = 2000  # all labels + transfer set: CE-only has plateaued by then, KD still learns (README)
FAST_STEPS = 40

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
    add_config_options(d)
    d.add_argument("--fast", action="store_true", help="small subset, 2 epochs, compact student unless you choose "
                   "others (also KD_FAST=1)")

    t = commands.add_parser("trainer", help="the KD student trained by transformers.Trainer (kd_helpers.hf."
                            "DistillationTrainer) with the cached teacher logits; runs under torchrun too")
    add_config_options(t)
    t.add_argument("--fast", action="store_true", help="small subset, 2 epochs, compact student (also KD_FAST=1)")

    e = commands.add_parser("evaluate", help="accuracy of a saved model on a data file")
    e.add_argument("--model", required=True, help="a folder saved by distill (e.g. outputs/student)")
    e.add_argument("--data", required=True, help="a CSV/TSV/JSONL file with text and label columns")
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--max-length", type=int, default=128)
    e.add_argument("--json", action="store_true", help="end with one JSON line: accuracy, n")
    s = commands.add_parser("sweep", help="temperature x alpha grid (+ the CE-only baseline) over seeds, "
                            "tiny student + transfer set; cached and resumable")
    s.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0])
    s.add_argument("--alphas", type=float, nargs="+", default=[0.3, 0.5, 0.7, 0.9])
    s.add_argument("--seeds", type=int, nargs="+", default=list(SWEEP_SEEDS))
    s.add_argument("--steps", type=int, default=None, help=f"optimizer steps per run (default {SWEEP_STEPS})")
    s.add_argument("--fraction", type=float, default=SWEEP_FRACTION, help="share of training labels known")
    s.add_argument("--student", choices=STUDENTS, default="tiny")
    s.add_argument("--results", default=None, help="results JSON (default: the one notebook 04 ships with)")
    s.add_argument("--summary", action="store_true", help="print the stored sweep's summary; train nothing")
    s.add_argument("--json", action="store_true", help="with --summary: end with one JSON line")
    s.add_argument("--fast", action="store_true", help="small subset, few steps (also KD_FAST=1)")

    c = commands.add_parser("compare", help="KD vs CE-only vs augmentation-only for the tiny student over seeds, "
                            "on the test split, with paired tests")
    c.add_argument("--fractions", type=float, nargs="+", default=[1.0],
                   help="share of training labels known, one regime each (default: 1.0, all labels)")
    c.add_argument("--seeds", type=int, nargs="+", default=list(SWEEP_SEEDS))
    c.add_argument("--steps", type=int, default=None, help=f"optimizer steps per student (default {COMPARE_STEPS})")
    c.add_argument("--methods", nargs="+", default=["kd", "ce", "aug_ce"], choices=["kd", "ce", "aug_ce"])
    c.add_argument("--temperature", type=float, default=4.0)
    c.add_argument("--alpha", type=float, default=0.7, help="weight of the KL term on labelled rows")
    c.add_argument("--variants", type=int, default=None,
                   help="augmented variants per training sentence in the transfer set (default 20; "
                        "make demo and the sweep use 8)")
    c.add_argument("--output-dir", default="outputs")
    c.add_argument("--fast", action="store_true", help="small subset, few steps (also KD_FAST=1)")

    f = commands.add_parser("features", help="beyond logits: CE-only, logit KD and logit KD + feature losses "
                            "(hidden states, attention maps) for the tiny student over seeds, test split, paired tests")
    f.add_argument("--feature-loss", default=None, help="comma-separated, from: hidden (MSE through a learned "
                   "projection), cosine, attention (KL of attention maps); default: notebook 05's comparison "
                   "(logit+hidden and logit+hidden+attention)")
    f.add_argument("--feature-weight", default=None, help="comma-separated weights, one per --feature-loss "
                   "(default 1 each); added to the logit loss")
    f.add_argument("--seeds", type=int, nargs="+", default=list(SWEEP_SEEDS))
    f.add_argument("--steps", type=int, default=None, help="optimizer steps per student (default 400)")
    f.add_argument("--output-dir", default="outputs")
    f.add_argument("--fast", action="store_true", help="small subset, few steps (also KD_FAST=1)")
    return parser


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """One option per ``KDConfig`` field with ``option(...)`` metadata: names, help and defaults from one place.

    Options left out are not passed on, so ``KDConfig`` applies its (mode-dependent) default.
    """
    for f in dataclasses.fields(KDConfig):
        if "help" not in f.metadata:
            continue
        meta = dict(f.metadata)
        flag = meta.pop("flag", "--" + f.name.replace("_", "-"))
        help_text = meta.pop("help")
        if f.default not in (None, dataclasses.MISSING) and "action" not in meta and "default" not in help_text:
            help_text += f" (default {f.default})"
        parser.add_argument(flag, dest=f.name, default=argparse.SUPPRESS, help=help_text, **meta)


def config_from_args(args: argparse.Namespace, **fixed) -> KDConfig:
    """The ``KDConfig`` for the options given on the command line (and ``KD_FAST`` / ``KD_CPU_BF16``)."""
    names = {f.name for f in dataclasses.fields(KDConfig)}
    given = {k: v for k, v in vars(args).items() if k in names and k != "fast"}
    if getattr(args, "fast", False):
        given["fast"] = True
    return KDConfig.from_env(**{**given, **fixed})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        commands = {"distill": cmd_distill, "trainer": cmd_trainer, "evaluate": cmd_evaluate, "sweep": cmd_sweep,
                    "compare": cmd_compare, "features": cmd_features}
        return commands[args.command](args)
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
    from kd_helpers.parallel import launched_processes, run_experiment_ddp

    config = config_from_args(args)
    if launched_processes() > 1:  # accelerate launch / torchrun: data-parallel, the main process reports
        results = run_experiment_ddp(config)
        if results is None:
            return 0
    else:
        print(f"kd_helpers distill: preset={config.preset} student={config.student} data={config.data} "
              f"mode={'fast' if config.fast else 'full'}")
        results = run_experiment(config)
    print()
    print(format_table(results))
    saved = [os.path.join(config.output_dir, "results.json")]
    if not results["interrupted"]:
        saved.append(os.path.join(config.output_dir, "student") + "/")
        if results.get("small_student"):
            saved.append(results["small_student"]["saved_to"] + "/")
    print(f"\nSaved {', '.join(saved)}")
    return EXIT_INTERRUPTED if results["interrupted"] else 0


def cmd_trainer(args) -> int:
    from kd_helpers.hf import run_trainer

    config = config_from_args(args)
    results = run_trainer(config)
    if results is not None:
        print(f"\nSaved {os.path.join(config.output_dir, 'results.json')}, "
              f"{os.path.join(config.output_dir, 'student')}/")
    return 0


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


def cmd_sweep(args) -> int:
    """``python -m kd_helpers sweep``: prepare once, run the grid over seeds, print the accuracy table."""
    from kd_helpers import experiment, sweep, transfer

    sweep.check_grid(args.temperatures, args.alphas)
    config = config_from_args(args)
    path = Path(args.results) if args.results else sweep.default_results_path(config)
    if args.summary:
        if not path.exists():
            raise KDError(f"{path}: no sweep results here; run `python -m kd_helpers sweep` first")
        results = sweep.load_sweep(path)
        print(sweep.format_grid(results))
        for name, shape in sweep.structure(results).items():
            what = "the whole heatmap (CE-only column included)" if name == "with_baseline" else "the KD cells only"
            print(f"Spread of cell means over {what}: {100 * shape['range']:.1f} points; mean SE of a cell mean "
                  f"{100 * shape['mean_se']:.2f} points; ratio {shape['range_over_se']:.1f}")
        if args.json:
            print(json.dumps(sweep.summary(results)))
        return 0
    steps = args.steps or (FAST_STEPS if config.fast else SWEEP_STEPS)
    print(f"kd_helpers sweep: student={config.student} mode={'fast' if config.fast else 'full'} steps={steps} "
          f"seeds={args.seeds} labels known={args.fraction:g} results={path}")
    setup = experiment.prepare(config)
    ts = transfer.prepare_transfer(setup, fraction=args.fraction)
    results = sweep.run_sweep(ts, args.temperatures, args.alphas, path, seeds=args.seeds, steps=steps)
    print()
    print(sweep.format_grid(results))
    print(f"\nSaved {path}")
    return EXIT_INTERRUPTED if results["interrupted"] else 0


def cmd_compare(args) -> int:
    """``python -m kd_helpers compare``: the three students over seeds, per label regime, on the test split.

    Trained students are cached (``KD_CACHE_DIR/students/``): an interrupted run resumes, and a run after notebook
    03 (the same students) loads them; each loaded student says so in the log."""
    from kd_helpers import experiment, transfer
    from kd_helpers.cache import atomic_write_json, check_writable

    config = config_from_args(args, student="tiny")
    steps = args.steps or (FAST_STEPS if config.fast else COMPARE_STEPS)
    if args.variants is not None and args.variants < 1:
        raise KDError(f"--variants {args.variants}: must be >= 1")
    check_writable(args.output_dir)
    setup = experiment.prepare(config)
    report = {"config": config.to_dict(), "environment": experiment.environment(), "regimes": []}
    for fraction in args.fractions:
        ts = transfer.prepare_transfer(setup, n_variants=args.variants or transfer.COMPARE_VARIANTS,
                                       fraction=fraction, bf16=transfer.compare_bf16(config))
        print(f"\nLabels known: {fraction:.0%} ({len(ts.labelled_ids)} rows); transfer rows: {len(ts.transfer_ids)}; "
              f"{steps} steps of {config.batch_size} for every student")
        result = transfer.compare_methods(ts, args.seeds, steps, methods=tuple(args.methods),
                                          temperature=args.temperature, alpha=args.alpha, cache=True)
        result.pop("students")
        report["regimes"].append(result)
        print(format_comparison(result))
    report["teacher_test_accuracy"] = experiment.teacher_test_accuracy(setup)
    out = Path(args.output_dir) / "compare.json"
    atomic_write_json(out, report)
    print(f"\nTeacher test accuracy: {100 * report['teacher_test_accuracy']:.1f} %\nSaved {out}")
    return 0


def feature_methods(feature_loss: str | None, feature_weight: str | None) -> dict:
    """The methods ``features`` trains: CE-only, logit KD, and the chosen feature losses (or notebook 05's)."""
    from kd_helpers import beyond
    from kd_helpers.features import FEATURES, FeatureWeights

    base = {k: beyond.METHODS[k] for k in ("ce", "logit")}
    if feature_loss is None:
        if feature_weight is not None:
            raise KDError("--feature-weight needs --feature-loss (which losses the weights are for)")
        return dict(beyond.METHODS)
    names = [n.strip() for n in feature_loss.split(",") if n.strip()]
    unknown = [n for n in names if n not in FEATURES]
    if not names or unknown or len(set(names)) != len(names):
        raise KDError(f"--feature-loss {feature_loss!r}: give distinct names from {', '.join(FEATURES)}")
    try:
        weights = [float(w) for w in feature_weight.split(",")] if feature_weight else [1.0] * len(names)
    except ValueError:
        raise KDError(f"--feature-weight {feature_weight!r}: comma-separated numbers, one per loss") from None
    if len(weights) != len(names):
        raise KDError(f"--feature-weight {feature_weight!r}: {len(weights)} weight(s) for {len(names)} loss(es)")
    chosen = FeatureWeights(**dict(zip(names, weights, strict=True)))
    return {**base, chosen.name(): (0.7, chosen)}


def cmd_features(args) -> int:
    """``python -m kd_helpers features``: notebook 05's comparison; results.json + the feature student saved."""
    from dataclasses import asdict

    from kd_helpers import beyond, experiment
    from kd_helpers.cache import atomic_write_json, check_writable

    methods = feature_methods(args.feature_loss, args.feature_weight)
    config = config_from_args(args, student="tiny")
    steps = args.steps or (FAST_STEPS if config.fast else beyond.STEPS)
    out = check_writable(args.output_dir) / "features"
    setup = experiment.prepare(config)
    fs = beyond.prepare_features(setup)
    print(f"Teacher states for {len(setup.train_set)} training rows: {fs.seconds:.1f} s (layer map "
          f"{fs.pairs}); {steps} steps of {config.batch_size} for every student, seeds {args.seeds}")
    results = beyond.open_results(fs, out / "runs.json", steps=steps, evals=beyond.EVALS)
    students = beyond.run_comparison(fs, results, methods, seeds=args.seeds)
    print(beyond.format_summary(results))
    last = list(methods)[-1]
    alpha, weights = methods[last]
    student = students.get(last) or beyond.train_run(fs, alpha, weights, args.seeds[0], steps)[0]  # resumed: again
    experiment.save_student(student, setup.tokenizer, out / "student")
    report = {"config": config.to_dict(), "environment": experiment.environment(),
              "feature_loss": args.feature_loss, "feature_weights": asdict(weights), "alpha": alpha,
              "methods": {name: {"alpha": a, "weights": asdict(w)} for name, (a, w) in methods.items()},
              "summary": [row for row in beyond.summary(results) if row["method"] in methods],
              "teacher_test_accuracy": results["teacher_test_accuracy"], "steps": steps, "seeds": args.seeds,
              "saved_student": {"method": last, "seed": args.seeds[0], "path": str(out / "student")}}
    atomic_write_json(out / "results.json", report)
    print(f"\nSaved {out / 'results.json'} and the {last} student (seed {args.seeds[0]}) in {out / 'student'}")
    return 0


def format_comparison(result: dict) -> str:
    """Mean ± sd test accuracy per student, the paired tests against CE-only, accuracy by review length."""
    from kd_helpers.stats import fmt_mean_sd

    names = {"kd": "KD + transfer set", "ce": "CE-only (labels)", "aug_ce": "CE on augmented rows (no teacher)"}
    buckets = list(result["bucket_rows"])
    lines = ["| student | test accuracy (mean ± sd) | per seed | vs CE-only: difference, 95 % CI, pooled McNemar p | "
             + " | ".join(f"{b} words ({result['bucket_rows'][b]} rows)" for b in buckets) + " |",
             "|---|---|---|---|" + "---|" * len(buckets)]
    for method, record in result["methods"].items():
        accs = record["test_accuracy"]
        test = result["tests"].get(method)
        versus = format_paired(test) if test else "-"
        lines.append(f"| {names.get(method, method)} | {fmt_mean_sd(accs)} | "
                     + ", ".join(f"{100 * a:.1f}" for a in accs) + f" | {versus} | "
                     + " | ".join(f"{100 * result['by_length'][method][b]:.1f} %" for b in buckets) + " |")
    if result.get("teacher_share"):
        lines += ["", "The teacher's share (KD vs CE on augmented rows, the same rows without the teacher): "
                  + format_paired(result["teacher_share"])]
    return "\n".join(lines)


def format_paired(test: dict) -> str:
    """``+2.5 points [+0.9, +4.1], p = 0.002 (per seed: ...)``: difference, bootstrap CI, pooled McNemar p."""
    boot = test["bootstrap"]
    return (f"{100 * test['difference_mean']:+.1f} points [{100 * boot['low']:+.1f}, {100 * boot['high']:+.1f}], "
            f"p = {test['mcnemar_pooled']['p_value']:.2g} (per seed: "
            + ", ".join(f"{t['p_value']:.2g}" for t in test["mcnemar_per_seed"]) + ")")


def format_table(results: dict) -> str:
    """The four headline accuracies first, then every metric per model (Markdown)."""
    head = ["Teacher", "Student before", "Student after (KD)", "Student CE-only"]
    keys = ["teacher_accuracy", "student_before_accuracy", "student_after_accuracy", "baseline_accuracy"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
             "| " + " | ".join(_pct(results.get(k)) for k in keys) + " |"]
    if results.get("validation_rows"):
        lines += ["", noise_line(results.get("teacher_accuracy") or 0.5, results["validation_rows"])]
    models = results.get("models")
    if models:
        names = [(key, title) for key, title in COLUMNS if key in models]
        rows = [("accuracy", "accuracy", _pct), ("agreement_with_teacher", "agreement with teacher", _pct),
                ("ece", "ECE (15 bins)", lambda v: f"{v:.3f}"), ("nll", "NLL", lambda v: f"{v:.3f}"),
                ("params", "parameters", lambda v: f"{v / 1e6:.1f} M"), ("size_mb", "size", lambda v: f"{v:.1f} MB"),
                ("latency_ms_batch1", "latency, batch 1 (CPU, median)", lambda v: f"{v:.1f} ms"),
                ("latency_iqr_ms_batch1", "latency IQR (spread)", lambda v: f"{v:.2f} ms"),
                ("throughput_batch32", "throughput, batch 32 (CPU)", lambda v: f"{v:.0f} rows/s")]
        lines += ["", "| metric | " + " | ".join(title for _, title in names) + " |", "|---|" + "---|" * len(names)]
        for key, label, fmt in rows:
            lines.append(f"| {label} | " + " | ".join(fmt(models[name][key]) if key in models[name] else "-"
                                                     for name, _ in names) + " |")
    small = results.get("small_student")
    if small:
        lines += ["", format_small_student(small)]
    return "\n".join(lines)


def noise_line(accuracy: float, n: int) -> str:
    """How precise one accuracy on ``n`` rows is: its standard error, and a warning when ``n`` is small."""
    from kd_helpers.experiment import SMALL_VALIDATION_ROWS
    from kd_helpers.stats import accuracy_se

    se = 100 * accuracy_se(min(max(accuracy, 0.5), 0.99), n)
    line = (f"{n} validation rows: one accuracy's standard error is about {se:.1f} points; a difference below "
            f"about {2 * se:.1f} points between two columns of this table is noise.")
    if n < SMALL_VALIDATION_ROWS:
        line = f"warning: only {line}"
    return line


def format_small_student(small: dict) -> str:
    """The tiny student's KD vs CE-only table (test split, mean ± sd over seeds, paired test, size and speed)."""
    from kd_helpers.stats import fmt_mean_sd

    ci = small["difference_ci"]
    teacher = small["teacher_test_accuracy"]
    kd_mean = sum(small["kd_test_accuracy"]) / len(small["kd_test_accuracy"])
    lat, thr = small["latency_ms_batch1"], small["throughput_batch32"]
    return "\n".join([
        f"Tiny student ({small['student_params'] / 1e6:.1f} M parameters, "
        f"{small['student_params'] / small['teacher_params']:.0%} "
        f"of the teacher's {small['teacher_params'] / 1e6:.1f} M), {small['fraction']:.0%} of the training labels "
        f"({small['labelled_rows']} rows; the teacher was trained on all of them), transfer set of "
        f"{small['transfer_rows']} rows, {small['steps']} steps of {small['batch_size']} for each student, "
        f"seeds {small['seeds']}, test split:",
        "",
        "| Teacher | KD + transfer set | CE-only | difference [95 % CI] | paired McNemar p (pooled; per seed) |",
        "|---|---|---|---|---|",
        f"| {100 * teacher:.1f} % | {fmt_mean_sd(small['kd_test_accuracy'])} | "
        f"{fmt_mean_sd(small['ce_test_accuracy'])} | "
        f"{100 * ci['difference']:+.1f} points [{100 * ci['low']:+.1f}, {100 * ci['high']:+.1f}] | "
        f"{small['paired_p_value']:.2g}; " + ", ".join(f"{p:.2g}" for p in small["per_seed_p_values"]) + " |",
        "",
        f"KD student / teacher: {kd_mean / teacher:.1%} of its test accuracy; latency at batch 1 "
        f"{lat['student']:.1f} vs {lat['teacher']:.1f} ms ({lat['teacher'] / lat['student']:.1f}x faster); "
        f"throughput at batch 32 {thr['student']:.0f} vs {thr['teacher']:.0f} rows/s "
        f"({thr['student'] / thr['teacher']:.1f}x).",
    ])


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


if __name__ == "__main__":
    raise SystemExit(main())
