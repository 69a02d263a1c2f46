"""Scaling of kd_helpers' default path: time and peak memory per training epoch at 1k, 4k, 16k, 64k rows.

The corpus's training split is resampled with replacement (seeded) to each size; teacher logits come from the
cached one-off pass over the unique rows (a resampled row has its source row's logits), so only the student's
epoch is timed: dynamic padding, length-grouped batches, cached logits. Each size runs in its own subprocess.
Writes ``benchmarks/scaling.png`` (log-log, with a linear reference line), a table, and a last-line JSON::

    .venv/bin/python benchmarks/bench_scaling.py
    .venv/bin/python benchmarks/bench_scaling.py --fast --sizes 64 256 --plot /tmp/scaling.png   # smoke check
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from bench_distill import load_setup, log, machine_info, peak_rss_mb, train, with_train_rows

from kd_helpers.config import fast_mode
from kd_helpers.experiment import new_student
from kd_helpers.train import CachedTeacher

HERE = Path(__file__).resolve().parent


def current_rss_mb() -> float:
    return _status_kib("VmRSS") / 1024


def reset_epoch_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) so the epoch's own peak can be read; False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def run_size(rows: int, args: argparse.Namespace) -> dict:
    setup = load_setup(args)
    source = setup.splits["train"]
    picks = np.random.default_rng(args.seed).integers(0, len(source), size=rows)
    raw = source.select(picks)
    teacher = CachedTeacher(setup.cached_teacher.logits[torch.as_tensor(picks)])
    loader = with_train_rows(setup, raw).train_loader(seed=args.seed, batch_size=args.batch_size)
    student = new_student(setup, kind=args.student, seed=args.seed)
    rss_before = current_rss_mb()
    resettable = reset_epoch_peak()
    run = train(student, teacher, loader, setup, args, 1, args.temperature, args.alpha)
    epoch_s = run["epoch_s"][0]
    return {"rows": rows, "unique_rows": int(len(set(picks.tolist()))), "steps": len(loader), "epoch_s": epoch_s,
            "rows_per_s": rows / epoch_s, "rss_before_epoch_mb": rss_before,
            "epoch_peak_mb": _status_kib("VmHWM") / 1024 if resettable else None,
            "torch_threads": torch.get_num_threads()}


def plot(results: list[dict], path: Path, student: str, machine: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = np.array([r["rows"] for r in results], dtype=float)
    seconds = np.array([r["epoch_s"] for r in results])
    peak = np.array([r["peak_rss_mb"] for r in results])
    epoch_peak = [r["epoch_peak_mb"] for r in results]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
    ax_t.loglog(rows, seconds, "o-", label="measured epoch time")
    ax_t.loglog(rows, seconds[0] * rows / rows[0], "k--", alpha=0.6, label="linear in rows (reference)")
    ax_t.set(xlabel="training rows", ylabel="seconds per epoch", title="Time per epoch")
    ax_m.loglog(rows, peak, "o-", color="tab:red", lw=4, alpha=0.4, label="peak RSS of the process (incl. set-up)")
    if None not in epoch_peak:
        ax_m.loglog(rows, epoch_peak, "s-", color="tab:orange", label="peak RSS during the epoch")
    ax_m.loglog(rows, peak[0] * rows / rows[0], "k--", alpha=0.6, label="linear in rows (reference)")
    ax_m.loglog(rows, np.full_like(rows, peak[0]), "k:", alpha=0.6, label="flat (reference)")
    ax_m.set(xlabel="training rows", ylabel="peak memory (MB)", title="Peak memory")
    plain = matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}")
    for ax in (ax_t, ax_m):
        ax.set_xticks(rows, [f"{r / 1000:g}k" if r >= 1000 else f"{r:g}" for r in rows])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.yaxis.set_major_formatter(plain)
        low, high = ax.get_ylim()  # label the minor ticks only when the axis spans less than a decade
        ax.yaxis.set_minor_formatter(plain if high / low < 10 else matplotlib.ticker.NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"kd_helpers default path, {student} student: dynamic padding + length grouping + cached logits")
    fig.text(0.01, 0.01, f"{machine['cpu_model']}, {machine['cpu_affinity']} CPUs, torch {machine['torch']}, "
             f"{machine['date']}", fontsize=7, color="gray")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 16000, 64000])
    p.add_argument("--student", choices=("base", "compact"), default="compact")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--alpha", type=float, default=0.7)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--plot", type=Path, default=HERE / "scaling.png")
    p.add_argument("--fast", action="store_true", default=fast_mode(), help="KD_FAST teacher/splits: smoke check")
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)  # set by the parent for its subprocesses
    return p.parse_args(argv)


def child(argv: list[str], size: int) -> dict:
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), *argv, "--size", str(size)],
                          stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    args = parse_args()
    if args.size is not None:
        result = run_size(args.size, args) if args.size > 0 else {}
        print(json.dumps({**result, "peak_rss_mb": peak_rss_mb()}))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    argv, machine = sys.argv[1:], machine_info()
    child(argv, 0)  # trains and caches the teacher and its logits if needed, outside every timed process
    results = []
    for size in sorted(args.sizes):
        log(f"running {size} rows ...")
        results.append(child(argv, size))
    machine["loadavg_end"] = os.getloadavg()
    rows = np.array([r["rows"] for r in results], dtype=float)
    slope = float(np.polyfit(np.log(rows), np.log([r["epoch_s"] for r in results]), 1)[0]) if len(rows) > 1 else None
    peaks = [r["peak_rss_mb"] for r in results]
    plot(results, args.plot, args.student, machine)

    print(f"machine: {machine['cpu_model']}, {machine['cpu_affinity']} CPUs, torch {machine['torch']} "
          f"({results[0]['torch_threads']} threads), load avg at start {machine['loadavg_start'][0]:.2f}")
    if args.fast:
        print("WARNING: --fast / KD_FAST=1: small teacher and corpus; a smoke check, not a result")
    print(f"student: {args.student}, batch {args.batch_size}, one epoch per size, resampled with replacement\n")
    print(f"{'rows':>7} {'steps':>6} {'epoch s':>9} {'rows/s':>8} {'s/1k rows':>10} {'peak MB':>8} "
          f"{'epoch peak MB':>14}")
    for r in results:
        epoch_peak = f"{r['epoch_peak_mb']:.0f}" if r["epoch_peak_mb"] is not None else "n/a"
        print(f"{r['rows']:>7} {r['steps']:>6} {r['epoch_s']:>9.1f} {r['rows_per_s']:>8.1f} "
              f"{1000 * r['epoch_s'] / r['rows']:>10.2f} {r['peak_rss_mb']:>8.0f} {epoch_peak:>14}")
    if slope is not None:
        print(f"\nlog-log slope of time vs rows: {slope:.2f} (1.00 = linear); "
              f"peak memory max/min: {max(peaks) / min(peaks):.2f}")
    print(f"plot: {args.plot}")
    print(json.dumps({"sizes": results, "time_slope_loglog": slope, "peak_mb_ratio": max(peaks) / min(peaks),
                      "plot": str(args.plot), "machine": machine,
                      "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "size"},
                      "command": " ".join([os.path.relpath(__file__), *argv]), "finished": time.strftime("%H:%M")}))


if __name__ == "__main__":
    main()
