"""The temperature x alpha sweep behind notebook 04: one teacher pass, one fresh student per configuration.

Every configuration starts from the same seeded student and sees the same batches; the CE-only baseline
(alpha = 0, where T plays no role) is trained once, under the key ``"baseline"``. Results are written
atomically after each configuration, so Ctrl-C loses at most the one in flight and a rerun resumes.

File layout (``kind: "kd_helpers.sweep"``)::

    {"key": {...what the results depend on...}, "teacher_accuracy": 0.9, "epochs": 3,
     "temperatures": [...], "alphas": [...],
     "runs": {"baseline": {...}, "T=2,alpha=0.5": {"temperature": 2.0, "alpha": 0.5, "accuracy": 0.85,
                                                   "history": [...per epoch...], "steps": [...per step...]}}}

Default file (``python -m kd_helpers sweep``): ``notebooks/data/sweep_results.json`` in a checkout, full mode;
``<output_dir>/sweep_results.json`` when installed elsewhere; ``<output_dir>/sweep_results_fast.json`` in
fast mode, so that a quick run never overwrites the sweep the notebook ships with.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from kd_helpers import experiment
from kd_helpers.cache import atomic_write_json, cache_key, read_json_checked
from kd_helpers.config import KDConfig, cache_dir, fast_mode
from kd_helpers.data import fingerprint
from kd_helpers.errors import KDError
from kd_helpers.train import cpu_bf16_requested, evaluate_model

KIND = "kd_helpers.sweep"
BASELINE = "baseline"
REPO = Path(__file__).resolve().parents[1]


def run_key(temperature: float | None, alpha: float) -> str:
    """The name of a configuration in ``results["runs"]``; every alpha = 0 run is the one baseline."""
    return BASELINE if alpha == 0 else f"T={float(temperature):g},alpha={float(alpha):g}"


def find_run(results: dict, temperature: float | None, alpha: float) -> dict | None:
    """The stored run of one configuration, or None if it has not been trained."""
    return results.get("runs", {}).get(run_key(temperature, alpha))


def sweep_key(setup: experiment.Setup, epochs: int) -> dict:
    """What a sweep's numbers depend on: the student recipe, the data and the teacher (not the grid)."""
    cfg = setup.config
    teacher = setup.teacher_info.get("key") or setup.teacher_info.get("source")
    return {"preset": cfg.preset, "base": cfg.base or cfg.preset, "student": cfg.student, "data": cfg.data,
            "train_data": fingerprint(setup.splits["train"]), "val_data": fingerprint(setup.splits["validation"]),
            "teacher": str(teacher), "epochs": int(epochs), "batch_size": cfg.batch_size, "lr": cfg.lr,
            "max_length": cfg.max_length, "seed": cfg.seed, "group_by_length": cfg.group_by_length,
            "freeze_embeddings": cfg.freeze_embeddings, "fast": cfg.fast,
            **({"cpu_bf16": True} if cpu_bf16_requested() else {})}  # KD_CPU_BF16 runs never mix with fp32 ones


def new_sweep(setup: experiment.Setup, epochs: int) -> dict:
    """An empty results dict for ``setup`` (evaluates the teacher once for the reference line)."""
    key = sweep_key(setup, epochs)
    return {"kind": KIND, "key": key, "key_hash": cache_key(**key), "epochs": int(epochs), "temperatures": [],
            "alphas": [], "runs": {}, "interrupted": False,
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


def load_sweep(path: str | Path) -> dict:
    """Read a sweep file (checksum verified); ``results["path"]`` remembers where it came from."""
    results = read_json_checked(path)
    if results.get("kind") != KIND:
        raise KDError(f"{path} is not a sweep results file (kind={results.get('kind')!r})")
    return {**results, "path": str(path)}


def save_sweep(results: dict, path: str | Path) -> None:
    """Write atomically with a checksum; the in-memory ``path`` entry is not stored."""
    atomic_write_json(path, {k: v for k, v in results.items() if k != "path"})
    results["path"] = str(path)


def open_sweep(setup: experiment.Setup, epochs: int, path: str | Path, log: Callable = print) -> dict:
    """Resume the sweep in ``path`` if it was made with this setup; a corrupt file is reported and rebuilt.

    A full-mode sweep of another setup is never overwritten (``KDError``); a fast-mode one is replaced.
    """
    path = Path(path)
    if path.exists():
        try:
            results = load_sweep(path)
        except KDError:  # a valid file of another kind (say a distill results.json): never overwrite it
            raise
        except ValueError as exc:  # unreadable or checksum mismatch: a crash or an edit; rebuild
            log(f"{exc}; starting the sweep again")
        else:
            key = sweep_key(setup, epochs)
            if results.get("key") != key:
                diff = sorted(k for k in key if results.get("key", {}).get(k) != key[k])
                if key["fast"] and results.get("key", {}).get("fast"):  # seconds of training: scratch, replace it
                    log(f"{path} holds a fast-mode sweep of another setup (differs in: {', '.join(diff)}); "
                        "starting a new one")
                    return new_sweep(setup, epochs) | {"path": str(path)}
                raise KDError(f"{path} holds a sweep of a different setup (differs in: {', '.join(diff)}); "
                              "pass another results file (--results) or delete it")
            return results
    return new_sweep(setup, epochs) | {"path": str(path)}


def train_config(setup: experiment.Setup, results: dict, temperature: float, alpha: float,
                 path: str | Path | None = None, progress: bool = True) -> dict | None:
    """Train one configuration from the seeded fresh student, store it in ``results`` (and ``path``).

    Returns the stored run, or None if training was interrupted (an interrupted run is never stored).
    """
    start = time.perf_counter()
    _, run = experiment.train_student(setup, alpha=float(alpha), temperature=float(temperature),
                                      epochs=results["epochs"], verbose=False, progress=progress)
    if run.interrupted or not run.history:
        return None
    record = {"temperature": None if alpha == 0 else float(temperature), "alpha": float(alpha),
              "accuracy": run.history[-1]["accuracy"], "history": run.history,
              "steps": [{k: round(v, 6) if isinstance(v, float) else v for k, v in s.items()} for s in run.steps],
              "seconds": round(time.perf_counter() - start, 1), "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    results["runs"][run_key(temperature, alpha)] = record
    if alpha != 0:
        results["temperatures"] = sorted(set(results["temperatures"]) | {float(temperature)})
        results["alphas"] = sorted(set(results["alphas"]) | {float(alpha)})
    if path is not None:
        save_sweep(results, path)
    return record


def run_sweep(setup: experiment.Setup, temperatures: Sequence[float], alphas: Sequence[float], epochs: int,
              results_path: str | Path, progress: bool = True, log: Callable = print) -> dict:
    """Train the CE-only baseline and every (T, alpha) not yet in ``results_path``; returns the results.

    On Ctrl-C the finished configurations are kept and the returned dict has ``interrupted = True``.
    """
    check_grid(temperatures, alphas)
    results = open_sweep(setup, epochs, results_path, log=log)
    results["temperatures"] = sorted(set(results["temperatures"]) | {float(t) for t in temperatures})
    results["alphas"] = sorted(set(results["alphas"]) | {float(a) for a in alphas if a != 0})
    grid = [(None, 0.0)] + [(float(t), float(a)) for t in temperatures for a in alphas if a != 0]
    todo = [(t, a) for t, a in grid if find_run(results, t, a) is None]
    log(f"Sweep: {len(grid)} configurations ({len(grid) - len(todo)} already in {results_path}), "
        f"{epochs} epoch(s) each")
    results["interrupted"] = False
    for n, (temperature, alpha) in enumerate(todo, 1):
        name = run_key(temperature, alpha)
        try:
            record = train_config(setup, results, setup.config.temperature if temperature is None else temperature,
                                  alpha, results_path, progress=progress)
        except KeyboardInterrupt:
            record = None
        if record is None:
            results["interrupted"] = True
            log(f"Interrupted during {name}: kept {len(results['runs'])} finished configuration(s)")
            break
        log(f"[{n}/{len(todo)}] {name}: accuracy {record['accuracy']:.4f} ({record['seconds']:.0f} s)")
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
                  alphas: Sequence[float] | None = None) -> np.ndarray:
    """Final accuracy per (T, alpha): rows follow ``temperatures``, columns ``alphas``; NaN where not run."""
    temperatures = results["temperatures"] if temperatures is None else temperatures
    alphas = results["alphas"] if alphas is None else alphas
    grid = np.full((len(temperatures), len(alphas)), np.nan)
    for i, t in enumerate(temperatures):
        for j, a in enumerate(alphas):
            run = find_run(results, t, a)
            grid[i, j] = np.nan if run is None else run["accuracy"]
    return grid


def format_grid(results: dict) -> str:
    """A Markdown table of final accuracies: one row per T, one column per alpha, then the baseline."""
    alphas, grid = results["alphas"], accuracy_grid(results)
    lines = ["| T \\ alpha | " + " | ".join(f"{a:g}" for a in alphas) + " |", "|---|" + "---|" * len(alphas)]
    for t, row in zip(results["temperatures"], grid, strict=True):
        lines.append(f"| {t:g} | " + " | ".join("-" if np.isnan(v) else f"{100 * v:.1f} %" for v in row) + " |")
    baseline = find_run(results, None, 0.0)
    base = "-" if baseline is None else f"{100 * baseline['accuracy']:.1f} %"
    lines.append(f"\nCE-only baseline (alpha = 0): {base}; teacher: {100 * results['teacher_accuracy']:.1f} %")
    return "\n".join(lines)


def cmd_sweep(args) -> int:
    """``python -m kd_helpers sweep``: prepare once, run the grid, print the accuracy table."""
    check_grid(args.temperatures, args.alphas)
    config = KDConfig(student=args.student, epochs=args.epochs, fast=args.fast or fast_mode())
    path = Path(args.results) if args.results else default_results_path(config)
    print(f"kd_helpers sweep: student={config.student} mode={'fast' if config.fast else 'full'} "
          f"epochs={config.epochs} results={path}")
    setup = experiment.prepare(config)
    results = run_sweep(setup, args.temperatures, args.alphas, config.epochs, path)
    print()
    print(format_grid(results))
    print(f"\nSaved {path}")
    return 130 if results["interrupted"] else 0
