"""The temperature x alpha sweep behind notebook 04, in the regime where distillation pays.

The tiny student learns from a transfer set (:mod:`kd_helpers.transfer`) with a fraction of the labels; every
configuration is trained for several seeds (student initialisation and batch order vary together), with the
same steps and the same rows, and evaluated on validation ``evals`` times, so that accuracy curves are curves.
The CE-only baseline (no teacher: labelled rows only, the same steps) is trained once per seed under the key
``"baseline"``. The teacher labels the transfer set once for the whole sweep. Results are written atomically
after each (configuration, seed), so Ctrl-C loses at most the run in flight and a rerun resumes.

File layout (``kind: "kd_helpers.sweep/2"``)::

    {"key": {...what the results depend on...}, "teacher_accuracy": 0.86, "seeds": [1, 2, 3],
     "temperatures": [...], "alphas": [...],
     "runs": {"baseline": RUN, "T=2,alpha=0.5": RUN, ...}}
    RUN = {"temperature": 2.0, "alpha": 0.5, "accuracy": mean final validation accuracy, "sd": ..., "n": ...,
           "history": [{"step", "accuracy", "accuracy_sd", "loss", ...} mean over seeds, per evaluation],
           "steps": [{"step", "total_loss", "distill_loss", "student_loss"} mean over seeds, every 8th step],
           "per_seed": {"1": {"accuracy", "history", "correct": "0110..." per validation row}, ...}}
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from kd_helpers import stats
from kd_helpers.cache import atomic_write_json, cache_key, read_json_checked
from kd_helpers.config import KDConfig, cache_dir
from kd_helpers.data import fingerprint
from kd_helpers.errors import KDError
from kd_helpers.train import evaluate_model, optimizer_name
from kd_helpers.transfer import TransferSetup, predictions, train_method

KIND = "kd_helpers.sweep/2"
BASELINE = "baseline"
REPO = Path(__file__).resolve().parents[1]
SEEDS = (1, 2, 3)
STEPS, EVALS, FRACTION = 800, 8, 0.1  # the regime: 800 steps of 32, 10 % of the labels, 8 evaluations
STEP_STRIDE = 8  # per-step losses are stored every 8th step (the curves keep their shape, the file stays small)


def run_key(temperature: float | None, alpha: float) -> str:
    """The name of a configuration in ``results["runs"]``; every alpha = 0 run is the one CE-only baseline."""
    return BASELINE if alpha == 0 else f"T={float(temperature):g},alpha={float(alpha):g}"


def find_run(results: dict, temperature: float | None, alpha: float) -> dict | None:
    """The stored run of one configuration (with at least one seed), or None if it has not been trained."""
    run = results.get("runs", {}).get(run_key(temperature, alpha))
    return run if run and run.get("per_seed") else None


def sweep_key(ts: TransferSetup, steps: int, evals: int) -> dict:
    """What a sweep's numbers depend on: student, data, teacher, regime and budget (not the grid or seeds)."""
    setup = ts.setup
    cfg = setup.config
    return {"preset": cfg.preset, "base": cfg.base or cfg.preset, "student": cfg.student, "data": cfg.data,
            "train_data": fingerprint(setup.splits["train"]), "val_data": fingerprint(setup.splits["validation"]),
            "teacher": setup.teacher_id, "steps": int(steps), "evals": int(evals), "batch_size": cfg.batch_size,
            "lr": cfg.lr, "max_length": cfg.max_length, "fraction": ts.fraction, "n_variants": ts.n_variants,
            "fast": cfg.fast, **({"precision": "bf16-autocast"} if getattr(ts, "bf16", False) else {}),
            "optimizer": optimizer_name(setup.device)}


def new_sweep(ts: TransferSetup, steps: int, evals: int, seeds: Sequence[int]) -> dict:
    """An empty results dict (evaluates the teacher once, for the reference line)."""
    key = sweep_key(ts, steps, evals)
    setup = ts.setup
    return {"kind": KIND, "key": key, "key_hash": cache_key(**key), "steps": int(steps), "evals": int(evals),
            "seeds": [int(s) for s in seeds], "temperatures": [], "alphas": [], "runs": {}, "interrupted": False,
            "labelled_rows": len(ts.labelled_ids), "transfer_rows": len(ts.transfer_ids),
            "teacher_accuracy": evaluate_model(setup.teacher, setup.teacher_val_loader, setup.device)}


def default_results_path(config: KDConfig) -> Path:
    """Full mode in a checkout: the file notebook 04 ships with; otherwise a file under ``output_dir``."""
    if config.fast:
        return Path(config.output_dir) / "sweep_results_fast.json"
    if (REPO / "notebooks").is_dir() and (REPO / "kd_helpers").is_dir():
        return REPO / "notebooks" / "data" / "sweep_results.json"
    return Path(config.output_dir) / "sweep_results.json"


def side_path(key_hash: str) -> Path:
    """Where runs trained from a setup that differs from the loaded sweep's are kept (never mixed in)."""
    return cache_dir() / "sweeps" / f"{key_hash}.json"


def target_for(results: dict, ts: TransferSetup) -> tuple[dict, str, bool]:
    """Where a new run of setup ``ts`` is stored: ``results``' own file when the setup matches its key, else a
    side sweep for that setup under the cache. Returns ``(sweep, path, same_setup)``."""
    steps, evals = results["steps"], results["evals"]
    key = sweep_key(ts, steps, evals)
    if key == results.get("key"):
        return results, results.get("path") or str(side_path(results["key_hash"])), True
    path = side_path(cache_key(**key))
    if path.exists():
        try:
            return load_sweep(path), str(path), False
        except ValueError:
            pass
    side = new_sweep(ts, steps, evals, results["seeds"])
    save_sweep(side, path)
    return side, str(path), False


def load_sweep(path: str | Path) -> dict:
    """Read a sweep file (checksum verified); ``results["path"]`` remembers where it came from."""
    results = read_json_checked(path)
    if results.get("kind") != KIND:
        raise KDError(f"{path} is not a sweep results file of this version (kind={results.get('kind')!r}); "
                      "run `python -m kd_helpers sweep --results NEW.json`")
    return {**results, "path": str(path)}


def save_sweep(results: dict, path: str | Path) -> None:
    """Write atomically with a checksum; the in-memory ``path`` entry is not stored."""
    atomic_write_json(path, {k: v for k, v in results.items() if k != "path"})
    results["path"] = str(path)


def open_sweep(ts: TransferSetup, steps: int, evals: int, seeds: Sequence[int], path: str | Path,
               log: Callable = print) -> dict:
    """Resume the sweep in ``path`` if it was made with this setup; a corrupt file is reported and rebuilt.

    A full-mode sweep of another setup is never overwritten (``KDError``); a fast-mode one is replaced.
    """
    path = Path(path)
    if path.exists():
        try:
            results = read_json_checked(path)
        except ValueError as exc:  # unreadable or checksum mismatch: a crash or an edit; rebuild
            log(f"{exc}; starting the sweep again")
        else:
            key = sweep_key(ts, steps, evals)
            if results.get("kind") == KIND and results.get("key") == key:
                results["seeds"] = sorted(set(results["seeds"]) | {int(s) for s in seeds})
                return {**results, "path": str(path)}
            old = results.get("key") if results.get("kind") == KIND else None
            if old is None and not str(results.get("kind", "")).startswith("kd_helpers.sweep"):
                raise KDError(f"{path} is not a sweep results file; pass another --results file")
            diff = sorted(k for k in key if (old or {}).get(k) != key[k]) if old else ["file version"]
            if key["fast"] and (old or {}).get("fast", True):  # seconds of training: scratch, replace it
                log(f"{path} holds a fast-mode sweep of another setup (differs in: {', '.join(diff)}); "
                    "starting a new one")
            else:
                raise KDError(f"{path} holds a sweep of a different setup (differs in: {', '.join(diff)}); "
                              "pass another results file (--results) or delete it")
    return new_sweep(ts, steps, evals, seeds) | {"path": str(path)}


def train_config(ts: TransferSetup, results: dict, temperature: float, alpha: float, seed: int,
                 path: str | Path | None = None, progress: bool = False) -> dict:
    """Train one (configuration, seed), store it in ``results`` (and ``path``); return the updated run."""
    start = time.perf_counter()
    method = "ce" if alpha == 0 else "kd"
    student, run = train_method(ts, method, seed, results["steps"], temperature=temperature, alpha=alpha,
                                evals=results["evals"], kind=ts.setup.config.student, progress=progress)
    predicted, labels = predictions(student, ts.setup.val_loader, ts.setup.device)
    record = results["runs"].setdefault(run_key(temperature, alpha), {
        "temperature": None if alpha == 0 else float(temperature), "alpha": float(alpha), "per_seed": {}})
    record["per_seed"][str(seed)] = {
        "accuracy": run.history[-1]["accuracy"], "history": run.history,
        "steps": [s for s in run.steps if s["step"] % STEP_STRIDE == 0],
        "correct": "".join("1" if ok else "0" for ok in (predicted == labels).tolist()),
        "seconds": round(time.perf_counter() - start, 1)}
    _summarise(record)
    if alpha != 0:
        results["temperatures"] = sorted(set(results["temperatures"]) | {float(temperature)})
        results["alphas"] = sorted(set(results["alphas"]) | {float(alpha)})
    if path is not None:
        save_sweep(results, path)
    return record


def _summarise(record: dict) -> None:
    """Mean and sd over the stored seeds: final accuracy, the accuracy curve and the per-step losses."""
    seeds = sorted(record["per_seed"], key=int)
    finals = [record["per_seed"][s]["accuracy"] for s in seeds]
    record["accuracy"], record["sd"] = stats.mean_sd(finals)
    record["n"] = len(seeds)
    histories = [record["per_seed"][s]["history"] for s in seeds]
    record["history"] = []
    for points in zip(*histories, strict=False):
        accuracy_mean, accuracy_sd = stats.mean_sd([p["accuracy"] for p in points])
        record["history"].append({"step": points[0]["step"], "accuracy": accuracy_mean, "accuracy_sd": accuracy_sd,
                                  **{k: float(np.mean([p[k] for p in points]))
                                     for k in ("loss", "distill_loss", "student_loss")}})
    step_lists = [record["per_seed"][s]["steps"] for s in seeds]
    record["steps"] = [{"step": points[0]["step"], **{k: float(np.mean([p[k] for p in points]))
                                                      for k in ("total_loss", "distill_loss", "student_loss")}}
                       for points in zip(*step_lists, strict=False)]


def select_seeds(results: dict, seeds) -> dict:
    """A copy of ``results`` whose means and sds use only ``seeds`` (what the explorer shows)."""
    wanted = {str(s) for s in seeds}
    runs = {}
    for key, run in results.get("runs", {}).items():
        kept = {s: r for s, r in run.get("per_seed", {}).items() if s in wanted}
        record = {**run, "per_seed": kept}
        if kept:
            _summarise(record)
        runs[key] = record
    return {**results, "runs": runs}


def run_sweep(ts: TransferSetup, temperatures: Sequence[float], alphas: Sequence[float], results_path: str | Path,
              seeds: Sequence[int] = SEEDS, steps: int = STEPS, evals: int = EVALS, log: Callable = print) -> dict:
    """Train the CE-only baseline and every (T, alpha), each for every seed, skipping what the file has.

    On Ctrl-C the finished runs are kept and the returned dict has ``interrupted = True``.
    """
    check_grid(temperatures, alphas)
    results = open_sweep(ts, steps, evals, seeds, results_path, log=log)
    results["temperatures"] = sorted(set(results["temperatures"]) | {float(t) for t in temperatures})
    results["alphas"] = sorted(set(results["alphas"]) | {float(a) for a in alphas if a != 0})
    grid = [(None, 0.0)] + [(float(t), float(a)) for t in temperatures for a in alphas if a != 0]
    todo = [(t, a, s) for t, a in grid for s in seeds
            if str(s) not in (results["runs"].get(run_key(t, a)) or {}).get("per_seed", {})]
    log(f"Sweep: {len(grid)} configurations x {len(seeds)} seeds = {len(grid) * len(seeds)} runs "
        f"({len(grid) * len(seeds) - len(todo)} already in {results_path}), {steps} steps each")
    results["interrupted"] = False
    for n, (temperature, alpha, seed) in enumerate(todo, 1):
        name = f"{run_key(temperature, alpha)} seed {seed}"
        try:
            record = train_config(ts, results, ts.setup.config.temperature if temperature is None else temperature,
                                  alpha, seed, results_path)
        except KeyboardInterrupt:
            results["interrupted"] = True
            log(f"Interrupted during {name}: kept the runs that finished")
            break
        last = record["per_seed"][str(seed)]
        log(f"[{n}/{len(todo)}] {name}: accuracy {last['accuracy']:.4f} ({last['seconds']:.0f} s)")
    save_sweep(results, results_path)
    return results


def check_grid(temperatures: Sequence[float], alphas: Sequence[float]) -> None:
    """Raise ``KDError`` before any training if a temperature is not > 0 or an alpha is outside [0, 1]."""
    for t in temperatures:
        if not (np.isfinite(t) and t > 0):
            raise KDError(f"--temperatures: {t!r} is not a finite number > 0")
    for a in alphas:
        if not 0.0 <= a <= 1.0:
            raise KDError(f"--alphas: {a!r} is not between 0 and 1 (alpha weights the KL term)")


def accuracy_grid(results: dict, temperatures: Sequence[float] | None = None,
                  alphas: Sequence[float] | None = None, what: str = "accuracy") -> np.ndarray:
    """Mean final accuracy (or ``what="sd"``) per (T, alpha): rows follow ``temperatures``, columns ``alphas``.

    NaN where a configuration has not been trained."""
    temperatures = results["temperatures"] if temperatures is None else temperatures
    alphas = results["alphas"] if alphas is None else alphas
    grid = np.full((len(temperatures), len(alphas)), np.nan)
    for i, t in enumerate(temperatures):
        for j, a in enumerate(alphas):
            run = find_run(results, t, a)
            grid[i, j] = np.nan if run is None else run[what]
    return grid


def paired_vs_baseline(results: dict, run: dict) -> dict | None:
    """The run's mean accuracy minus the CE-only baseline's, with the SE of that paired difference.

    Per validation row, the share of seeds that got it right is compared between the two (the same seeds and
    rows for both); the SE is that of the mean per-row difference. ``significant``: |difference| > 2 SE.
    """
    baseline = find_run(results, None, 0.0)
    if baseline is None or run is None or run is baseline:
        return None
    seeds = sorted(set(run["per_seed"]) & set(baseline["per_seed"]), key=int)
    if not seeds:
        return None
    a = np.mean([[c == "1" for c in run["per_seed"][s]["correct"]] for s in seeds], axis=0)
    b = np.mean([[c == "1" for c in baseline["per_seed"][s]["correct"]] for s in seeds], axis=0)
    se = stats.paired_difference_se(a, b)
    difference = float(a.mean() - b.mean())
    return {"difference": difference, "se": se, "significant": abs(difference) > 2 * se, "seeds": len(seeds)}


def significance_grid(results: dict, temperatures: Sequence[float], alphas: Sequence[float]) -> np.ndarray:
    """True where a cell differs from CE-only by more than 2 SE of the paired difference."""
    grid = np.zeros((len(temperatures), len(alphas)), dtype=bool)
    for i, t in enumerate(temperatures):
        for j, a in enumerate(alphas):
            paired = paired_vs_baseline(results, find_run(results, t, a))
            grid[i, j] = bool(paired and paired["significant"])
    return grid


def summary(results: dict) -> dict:
    """The numbers the heatmap shows: the baseline's and each cell's mean, sd and number of seeds."""
    baseline = find_run(results, None, 0.0)
    cells = []
    for t in results["temperatures"]:
        for a in results["alphas"]:
            run = find_run(results, t, a)
            if run is not None:
                cells.append({"temperature": t, "alpha": a, "mean": run["accuracy"], "sd": run["sd"], "n": run["n"]})
    base = {"mean": baseline["accuracy"], "sd": baseline["sd"], "n": baseline["n"]} if baseline else None
    return {"baseline": base, "cells": cells}


def structure(results: dict) -> dict:
    """Is there signal across the grid? The spread of cell means against the mean standard error of a cell mean.

    Reported twice: over the whole heatmap (the 16 KD cells and the CE-only column) and over the KD cells only
    (does T or alpha matter once the teacher is used?). A ratio well above 3 is structure; near 1 to 2, noise.
    """
    summary_ = summary(results)
    cells = summary_["cells"]
    if len(cells) < 2:
        return {}
    out = {}
    groups = {"kd_cells": cells, "with_baseline": cells + ([summary_["baseline"]] if summary_["baseline"] else [])}
    for name, group in groups.items():
        means = np.array([c["mean"] for c in group])
        ses = np.array([c["sd"] / np.sqrt(c["n"]) for c in group])
        spread = float(means.max() - means.min())
        out[name] = {"range": spread, "sd_of_means": float(means.std(ddof=1)), "mean_se": float(ses.mean()),
                     "range_over_se": spread / float(ses.mean()) if ses.mean() > 0 else float("inf")}
    return out


def format_grid(results: dict) -> str:
    """A Markdown table of mean ± sd final validation accuracy per (T, alpha), then the baseline."""
    alphas = results["alphas"]
    lines = ["| T \\ alpha | " + " | ".join(f"{a:g}" for a in alphas) + " |", "|---|" + "---|" * len(alphas)]
    for t in results["temperatures"]:
        cells = []
        for a in alphas:
            run = find_run(results, t, a)
            paired = paired_vs_baseline(results, run)
            mark = " *" if paired and paired["significant"] else ""
            cells.append("-" if run is None else f"{100 * run['accuracy']:.1f} ± {100 * run['sd']:.1f}{mark}")
        lines.append(f"| {t:g} | " + " | ".join(cells) + " |")
    baseline = find_run(results, None, 0.0)
    base = "-" if baseline is None else f"{100 * baseline['accuracy']:.1f} ± {100 * baseline['sd']:.1f} %"
    n = baseline["n"] if baseline else 0
    lines.append(f"\nMean ± sd of final validation accuracy over {n} seed(s); * = differs from CE-only by more "
                 f"than 2 SE of the paired difference.\nCE-only baseline (alpha = 0): {base}; "
                 f"teacher: {100 * results['teacher_accuracy']:.1f} %")
    return "\n".join(lines)
