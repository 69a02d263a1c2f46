"""The sweep: one run per (T, alpha) plus one baseline, saved after each, resumed without retraining."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from kd_helpers import experiment, sweep
from kd_helpers.cache import atomic_write_json
from kd_helpers.cli import main
from kd_helpers.config import KDConfig
from kd_helpers.errors import KDError
from kd_helpers.train import TrainingRun

GRID = {"temperatures": [2.0, 4.0], "alphas": [0.5]}


def fake_setup(rows: int = 8, fast: bool = True) -> SimpleNamespace:
    """What ``run_sweep`` reads from a Setup, without models: config, data identity, teacher identity."""
    texts = [f"review {i}" for i in range(rows)]
    split = {"text": texts, "label": [i % 2 for i in range(rows)]}
    return SimpleNamespace(config=KDConfig(fast=fast), splits={"train": split, "validation": split},
                           teacher_info={"key": "teacher-abc"}, teacher=None, teacher_val_loader=None, device="cpu")


def fake_run(alpha: float, temperature: float, epochs: int) -> TrainingRun:
    """A deterministic run whose numbers depend on (T, alpha), standing in for a real training."""
    acc = round(0.6 + 0.05 * alpha + 0.01 * temperature, 4)
    history = [{"epoch": e, "loss": 1 / e, "distill_loss": alpha / e, "student_loss": 0.7 / e, "accuracy": acc}
               for e in range(1, epochs + 1)]
    steps = [{"epoch": e, "total_loss": 1 / (e + s), "distill_loss": alpha, "student_loss": 0.7}
             for e in range(1, epochs + 1) for s in range(3)]
    return TrainingRun(history=history, steps=steps)


@pytest.fixture
def calls(monkeypatch):
    """Replace training with ``fake_run``; ``calls`` lists every (T, alpha) trained; ``calls.fail_at`` interrupts."""
    made = SimpleNamespace(log=[], fail_at=None, partial_at=None)

    def train_student(setup, alpha=None, temperature=None, epochs=None, verbose=True, progress=True):
        made.log.append((temperature, alpha))
        if made.fail_at == len(made.log):
            raise KeyboardInterrupt
        run = fake_run(alpha, temperature, epochs)
        if made.partial_at == len(made.log):  # Ctrl-C caught inside distill: one epoch kept, run flagged
            run.history, run.interrupted = run.history[:1], True
        return None, run

    monkeypatch.setattr(experiment, "train_student", train_student)
    monkeypatch.setattr(sweep, "evaluate_model", lambda *args: 0.9)
    return made


def _comparable(results: dict) -> dict:
    return {k: {f: v for f, v in run.items() if f not in ("seconds", "finished")} for k, run in results["runs"].items()}


def test_sweep_trains_grid_and_one_baseline(tmp_path, calls):
    path = tmp_path / "sweep.json"
    results = sweep.run_sweep(fake_setup(), **GRID, epochs=2, results_path=path, log=lambda *_: None)
    assert sorted(results["runs"]) == ["T=2,alpha=0.5", "T=4,alpha=0.5", "baseline"]
    assert len(calls.log) == 3 and [a for _, a in calls.log].count(0.0) == 1
    assert not results["interrupted"] and results["teacher_accuracy"] == 0.9
    on_disk = sweep.load_sweep(path)
    assert on_disk["runs"]["T=4,alpha=0.5"]["history"][-1]["accuracy"] == pytest.approx(0.665)
    assert len(on_disk["runs"]["baseline"]["steps"]) == 6 and on_disk["runs"]["baseline"]["temperature"] is None
    assert on_disk["key"]["teacher"] == "teacher-abc" and on_disk["key"]["epochs"] == 2
    assert sweep.find_run(on_disk, 8.0, 0.0) is on_disk["runs"]["baseline"]  # any T at alpha = 0


def test_resumed_sweep_does_not_retrain_finished_configurations(tmp_path, calls):
    path = tmp_path / "sweep.json"
    sweep.run_sweep(fake_setup(), **GRID, epochs=1, results_path=path, log=lambda *_: None)
    first = sweep.load_sweep(path)
    calls.log.clear()
    again = sweep.run_sweep(fake_setup(), **GRID, epochs=1, results_path=path, log=lambda *_: None)
    assert calls.log == []
    assert again["runs"]["T=2,alpha=0.5"]["finished"] == first["runs"]["T=2,alpha=0.5"]["finished"]
    bigger = sweep.run_sweep(fake_setup(), temperatures=[2.0, 4.0, 8.0], alphas=[0.5], epochs=1, results_path=path,
                             log=lambda *_: None)
    assert calls.log == [(8.0, 0.5)] and bigger["temperatures"] == [2.0, 4.0, 8.0]


def test_interrupted_sweep_keeps_finished_and_resumes_to_the_same_results(tmp_path, calls):
    path, reference = tmp_path / "sweep.json", tmp_path / "reference.json"
    calls.fail_at = 2  # Ctrl-C during the second configuration
    lines = []
    partial = sweep.run_sweep(fake_setup(), **GRID, epochs=2, results_path=path, log=lines.append)
    assert partial["interrupted"] and list(partial["runs"]) == ["baseline"]
    assert list(sweep.load_sweep(path)["runs"]) == ["baseline"] and "Interrupted" in lines[-1]
    calls.fail_at, calls.log[:] = None, []
    resumed = sweep.run_sweep(fake_setup(), **GRID, epochs=2, results_path=path, log=lambda *_: None)
    assert len(calls.log) == 2 and (None, 0.0) not in calls.log and not resumed["interrupted"]
    whole = sweep.run_sweep(fake_setup(), **GRID, epochs=2, results_path=reference, log=lambda *_: None)
    assert _comparable(sweep.load_sweep(path)) == _comparable(sweep.load_sweep(reference)) == _comparable(whole)


def test_a_run_interrupted_inside_training_is_not_stored(tmp_path, calls):
    calls.partial_at = 2
    results = sweep.run_sweep(fake_setup(), **GRID, epochs=2, results_path=tmp_path / "s.json", log=lambda *_: None)
    assert results["interrupted"] and list(sweep.load_sweep(tmp_path / "s.json")["runs"]) == ["baseline"]


def test_corrupt_file_is_reported_in_one_line_and_rebuilt(tmp_path, calls):
    path = tmp_path / "sweep.json"
    sweep.run_sweep(fake_setup(), **GRID, epochs=1, results_path=path, log=lambda *_: None)
    path.write_text(path.read_text()[:200])  # a truncated write
    lines = []
    results = sweep.run_sweep(fake_setup(), **GRID, epochs=1, results_path=path, log=lines.append)
    assert len(lines[0].splitlines()) == 1 and "starting the sweep again" in lines[0]
    assert len(results["runs"]) == 3 and sweep.load_sweep(path)["runs"].keys() == results["runs"].keys()


def test_a_full_mode_sweep_of_another_setup_is_never_overwritten(tmp_path, calls):
    path = tmp_path / "sweep.json"
    sweep.run_sweep(fake_setup(fast=False), **GRID, epochs=1, results_path=path, log=lambda *_: None)
    before = path.read_bytes()
    with pytest.raises(KDError, match="different setup.*epochs"):
        sweep.run_sweep(fake_setup(fast=False), **GRID, epochs=2, results_path=path, log=lambda *_: None)
    (tmp_path / "other.json").write_text(json.dumps({"a": 1}))
    with pytest.raises(ValueError):
        sweep.load_sweep(tmp_path / "other.json")
    assert path.read_bytes() == before
    distill_results = tmp_path / "results.json"  # a valid kd_helpers file of another kind
    atomic_write_json(distill_results, {"config": {}, "history": []})
    kept = distill_results.read_bytes()
    with pytest.raises(KDError, match="not a sweep results file"):
        sweep.run_sweep(fake_setup(), **GRID, epochs=1, results_path=distill_results, log=lambda *_: None)
    assert distill_results.read_bytes() == kept


def test_cpu_bf16_runs_never_join_an_fp32_sweep(tmp_path, calls, monkeypatch):
    path = tmp_path / "sweep.json"
    monkeypatch.delenv("KD_CPU_BF16", raising=False)
    sweep.run_sweep(fake_setup(fast=False), **GRID, epochs=1, results_path=path, log=lambda *_: None)
    monkeypatch.setenv("KD_CPU_BF16", "1")
    with pytest.raises(KDError, match=r"differs in: cpu_bf16"):
        sweep.run_sweep(fake_setup(fast=False), **GRID, epochs=1, results_path=path, log=lambda *_: None)


def test_a_fast_mode_sweep_of_another_setup_is_replaced(tmp_path, calls):
    path = tmp_path / "sweep_results_fast.json"
    sweep.run_sweep(fake_setup(), **GRID, epochs=1, results_path=path, log=lambda *_: None)
    lines = []
    results = sweep.run_sweep(fake_setup(), **GRID, epochs=2, results_path=path, log=lines.append)
    assert "fast-mode sweep of another setup (differs in: epochs); starting a new one" in lines[0]
    assert len(calls.log) == 6 and sweep.load_sweep(path)["key"]["epochs"] == 2
    assert all(len(run["history"]) == 2 for run in results["runs"].values())


def test_cli_sweep_prints_the_table_and_exit_codes(tmp_path, calls, monkeypatch, capsys):
    monkeypatch.setattr(experiment, "prepare", lambda config: fake_setup())
    path = tmp_path / "cli.json"
    args = ["sweep", "--fast", "--temperatures", "2", "4", "--alphas", "0.5", "--results", str(path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| T \\ alpha | 0.5 |" in out and "| 4 | 66.5 % |" in out and "CE-only baseline" in out
    calls.fail_at, calls.log[:] = 1, []
    assert main(args[:-1] + [str(tmp_path / "other.json")]) == 130
    assert main(["sweep", "--alphas", "1.5"]) == 2  # rejected before any model is loaded
    assert "between 0 and 1" in capsys.readouterr().err


def test_default_results_path():
    assert sweep.default_results_path(KDConfig(fast=True, output_dir="out")).as_posix() == "out/sweep_results_fast.json"
    assert sweep.default_results_path(KDConfig()) == sweep.REPO / "notebooks" / "data" / "sweep_results.json"
