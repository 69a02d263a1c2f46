"""The sweep: every (T, alpha) plus one baseline, for every seed, saved after each run, resumed without retraining."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kd_helpers import cli, experiment, sweep, transfer
from kd_helpers.cache import atomic_write_json
from kd_helpers.cli import main
from kd_helpers.config import KDConfig
from kd_helpers.errors import KDError
from kd_helpers.train import TrainingRun

GRID = {"temperatures": [2.0, 4.0], "alphas": [0.5]}
SEEDS = [1, 2]
VAL_ROWS = 40


def fake_ts(rows: int = 8, fast: bool = True, fraction: float = 0.1) -> SimpleNamespace:
    """What ``run_sweep`` reads from a TransferSetup, without models: config, data and teacher identity."""
    texts = [f"review {i}" for i in range(rows)]
    split = {"text": texts, "label": [i % 2 for i in range(rows)]}
    setup = SimpleNamespace(config=KDConfig(student="tiny", fast=fast), splits={"train": split, "validation": split},
                            teacher_id="teacher:abc", teacher=None, teacher_val_loader=None, val_loader=None,
                            device="cpu")
    return SimpleNamespace(setup=setup, fraction=fraction, n_variants=8, labelled_ids=[0], transfer_ids=[1, 2])


def fake_accuracy(temperature, alpha, seed) -> float:
    return round(0.6 + 0.05 * alpha + 0.01 * temperature + 0.002 * seed, 4)


@pytest.fixture
def calls(monkeypatch):
    """Replace training with a deterministic fake; ``calls.log`` lists every (T, alpha, seed) trained."""
    made = SimpleNamespace(log=[], fail_at=None)

    def train_method(ts, method, seed, steps, temperature=4.0, alpha=0.7, evals=8, kind="tiny", progress=False):
        made.log.append((temperature if alpha else None, alpha, seed))
        if made.fail_at == len(made.log):
            raise KeyboardInterrupt
        acc = fake_accuracy(temperature if alpha else 0.0, alpha, seed)
        history = [{"step": (i + 1) * steps // evals, "loss": 1 / (i + 1), "distill_loss": alpha,
                    "student_loss": 0.7, "accuracy": acc - 0.01 * (evals - 1 - i)} for i in range(evals)]
        step_losses = [{"step": s, "total_loss": 1 / s, "distill_loss": alpha, "student_loss": 0.7}
                       for s in range(1, steps + 1)]
        student = SimpleNamespace(acc=acc, seed=seed)
        return student, TrainingRun(history=history, steps=step_losses)

    def predictions(student, loader, device):  # the first round(acc * n) rows right
        n_right = round(student.acc * VAL_ROWS)
        return torch.tensor([1] * n_right + [0] * (VAL_ROWS - n_right)), torch.ones(VAL_ROWS, dtype=torch.long)

    monkeypatch.setattr(sweep, "train_method", train_method)
    monkeypatch.setattr(sweep, "predictions", predictions)
    monkeypatch.setattr(sweep, "evaluate_model", lambda *args: 0.9)
    return made


def _run(path, ts=None, seeds=SEEDS, steps=16, **grid):
    return sweep.run_sweep(ts or fake_ts(), **(grid or GRID), results_path=path, seeds=seeds, steps=steps, evals=8,
                           log=lambda *_: None)


def _comparable(results: dict) -> dict:
    return {k: {s: {f: v for f, v in r.items() if f != "seconds"} for s, r in run["per_seed"].items()}
            for k, run in results["runs"].items()}


def test_sweep_trains_grid_and_one_baseline_per_seed(tmp_path, calls):
    path = tmp_path / "sweep.json"
    results = _run(path)
    assert sorted(results["runs"]) == ["T=2,alpha=0.5", "T=4,alpha=0.5", "baseline"]
    assert len(calls.log) == 6 and [a for _, a, _ in calls.log].count(0.0) == 2
    assert not results["interrupted"] and results["teacher_accuracy"] == 0.9
    run = sweep.load_sweep(path)["runs"]["T=4,alpha=0.5"]
    expected = [fake_accuracy(4.0, 0.5, s) for s in SEEDS]
    assert run["accuracy"] == pytest.approx(np.mean(expected)) and run["sd"] == pytest.approx(np.std(expected, ddof=1))
    assert run["n"] == 2 and len(run["history"]) == 8  # eight evaluations: a curve, not two dots
    assert run["history"][-1]["accuracy_sd"] == pytest.approx(run["sd"])
    assert [s["step"] for s in run["steps"]] == [8, 16]  # every STEP_STRIDE-th step is kept


def test_rerun_trains_only_what_is_missing_seeds_included(tmp_path, calls):
    path = tmp_path / "sweep.json"
    _run(path)
    calls.log.clear()
    _run(path)
    assert calls.log == []
    bigger = _run(path, seeds=[1, 2, 3])
    assert sorted(calls.log, key=str) == sorted([(None, 0.0, 3), (2.0, 0.5, 3), (4.0, 0.5, 3)], key=str)
    assert bigger["seeds"] == [1, 2, 3] and bigger["runs"]["baseline"]["n"] == 3


def test_interrupted_sweep_keeps_finished_and_resumes_to_the_same_results(tmp_path, calls):
    path, reference = tmp_path / "sweep.json", tmp_path / "reference.json"
    calls.fail_at = 3  # Ctrl-C during the third run (the first configuration's first seed)
    partial = _run(path)
    assert partial["interrupted"] and sorted(sweep.load_sweep(path)["runs"]["baseline"]["per_seed"]) == ["1", "2"]
    calls.fail_at, calls.log[:] = None, []
    resumed = _run(path)
    assert len(calls.log) == 4 and not resumed["interrupted"]
    whole = _run(reference)
    assert _comparable(sweep.load_sweep(path)) == _comparable(sweep.load_sweep(reference)) == _comparable(whole)


def test_corrupt_file_is_reported_in_one_line_and_rebuilt(tmp_path, calls):
    path = tmp_path / "sweep.json"
    _run(path)
    path.write_text(path.read_text()[:200])  # a truncated write
    lines = []
    results = sweep.run_sweep(fake_ts(), **GRID, results_path=path, seeds=SEEDS, steps=16, log=lines.append)
    assert len(lines[0].splitlines()) == 1 and "starting the sweep again" in lines[0]
    assert len(results["runs"]) == 3 and sweep.load_sweep(path)["runs"].keys() == results["runs"].keys()


def test_a_full_mode_sweep_of_another_setup_is_never_overwritten(tmp_path, calls):
    path = tmp_path / "sweep.json"
    _run(path, ts=fake_ts(fast=False))
    before = path.read_bytes()
    with pytest.raises(KDError, match="different setup.*steps"):
        _run(path, ts=fake_ts(fast=False), steps=24)
    with pytest.raises(KDError, match="different setup.*fraction"):
        _run(path, ts=fake_ts(fast=False, fraction=1.0))
    (tmp_path / "other.json").write_text(json.dumps({"a": 1}))
    with pytest.raises(ValueError):
        sweep.load_sweep(tmp_path / "other.json")
    assert path.read_bytes() == before
    distill_results = tmp_path / "results.json"  # a valid kd_helpers file of another kind
    atomic_write_json(distill_results, {"config": {}, "history": []})
    kept = distill_results.read_bytes()
    with pytest.raises(KDError, match="not a sweep results file"):
        _run(distill_results)
    assert distill_results.read_bytes() == kept


def test_a_fast_mode_sweep_of_another_setup_is_replaced(tmp_path, calls):
    path = tmp_path / "sweep_results_fast.json"
    _run(path)
    lines = []
    sweep.run_sweep(fake_ts(), **GRID, results_path=path, seeds=SEEDS, steps=24, log=lines.append)
    assert "fast-mode sweep of another setup (differs in: steps); starting a new one" in lines[0]
    assert len(calls.log) == 12 and sweep.load_sweep(path)["key"]["steps"] == 24


def test_significance_marks_only_differences_beyond_two_standard_errors(tmp_path, calls):
    results = _run(tmp_path / "s.json", seeds=[1, 2, 3])
    paired = sweep.paired_vs_baseline(results, sweep.find_run(results, 4.0, 0.5))
    # fake predictions: baseline ~ 0.604 -> 24/40 right, T=4 ~ 0.669 -> 27/40 right; rows differ on 3 of 40
    d = np.array([0.0] * 24 + [1.0] * 3 + [0.0] * 13)
    assert paired["difference"] == pytest.approx(d.mean())
    assert paired["se"] == pytest.approx(d.std(ddof=1) / np.sqrt(40))
    assert paired["significant"] == (abs(d.mean()) > 2 * d.std(ddof=1) / np.sqrt(40))
    grid = sweep.significance_grid(results, [2.0, 4.0], [0.5])
    assert grid.shape == (2, 1)


def test_summary_json_is_what_the_heatmap_shows(tmp_path, calls, capsys):
    path = tmp_path / "s.json"
    results = _run(path)
    assert main(["sweep", "--summary", "--json", "--results", str(path)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    grid = sweep.accuracy_grid(results, [2.0, 4.0], [0.5])
    assert [c["mean"] for c in summary["cells"]] == pytest.approx(grid[:, 0].tolist())
    assert summary["baseline"]["n"] == 2 and {"temperature", "alpha", "mean", "sd", "n"} <= set(summary["cells"][0])
    assert main(["sweep", "--summary", "--results", str(tmp_path / "missing.json")]) == 2


def test_cli_sweep_prints_the_table_and_exit_codes(tmp_path, calls, monkeypatch, capsys):
    monkeypatch.setattr(experiment, "prepare", lambda config: fake_ts().setup)
    monkeypatch.setattr(transfer, "prepare_transfer", lambda setup, fraction: fake_ts(fraction=fraction))
    path = tmp_path / "cli.json"
    args = ["sweep", "--fast", "--temperatures", "2", "4", "--alphas", "0.5", "--seeds", "1", "2",
            "--results", str(path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| T \\ alpha | 0.5 |" in out and "| 4 | 66.8 ± 0.1" in out and "CE-only baseline" in out
    calls.fail_at, calls.log[:] = 1, []
    assert main(args[:-1] + [str(tmp_path / "other.json")]) == 130
    assert main(["sweep", "--alphas", "1.5"]) == 2  # rejected before any model is loaded
    assert "between 0 and 1" in capsys.readouterr().err


def test_cli_defaults_match_the_sweep_module():
    assert (cli.SWEEP_SEEDS, cli.SWEEP_STEPS, cli.SWEEP_FRACTION) == (sweep.SEEDS, sweep.STEPS, sweep.FRACTION)


def test_default_results_path():
    assert sweep.default_results_path(KDConfig(fast=True, output_dir="out")).as_posix() == "out/sweep_results_fast.json"
    assert sweep.default_results_path(KDConfig()) == sweep.REPO / "notebooks" / "data" / "sweep_results.json"


def test_structure_compares_the_spread_of_cell_means_with_their_standard_error(tmp_path, calls):
    results = _run(tmp_path / "s.json", seeds=[1, 2, 3])
    shape = sweep.structure(results)
    cells = [sweep.find_run(results, t, 0.5) for t in (2.0, 4.0)]
    se = np.mean([c["sd"] / np.sqrt(3) for c in cells])
    assert shape["kd_cells"]["range"] == pytest.approx(abs(cells[0]["accuracy"] - cells[1]["accuracy"]))
    assert shape["kd_cells"]["range_over_se"] == pytest.approx(shape["kd_cells"]["range"] / se)
    baseline = sweep.find_run(results, None, 0.0)["accuracy"]
    assert shape["with_baseline"]["range"] == pytest.approx(max(c["accuracy"] for c in cells) - baseline)
