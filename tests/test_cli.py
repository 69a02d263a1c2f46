"""The main job end to end in fast mode: results.json, the saved student, the evaluate command, no network."""

import json

import pytest
import torch
from conftest import NETWORK_ATTEMPTS

from kd_helpers import cli
from kd_helpers.cache import read_json_checked
from kd_helpers.data import corpus_dir

MODEL_KEYS = {"accuracy", "agreement_with_teacher", "ece", "nll", "params", "size_mb", "latency_ms_batch1",
              "throughput_batch32"}


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fast_run")
    NETWORK_ATTEMPTS.clear()
    code = cli.main(["distill", "--fast", "--output-dir", str(out)])
    return {"code": code, "out": out, "results": read_json_checked(out / "results.json"),
            "attempts": list(NETWORK_ATTEMPTS)}


def test_distill_fast_end_to_end(fast_run, capsys):
    assert fast_run["code"] == 0
    results = fast_run["results"]
    for key in ("teacher_accuracy", "student_before_accuracy", "student_after_accuracy", "baseline_accuracy",
                "history", "config", "models"):
        assert key in results
    assert results["interrupted"] is False
    assert results["config"]["fast"] is True and results["config"]["student"] == "compact"
    assert set(results["models"]) == {"teacher", "student_before", "student_kd", "student_ce", "student_kd_int8"}
    for report in results["models"].values():
        assert MODEL_KEYS <= set(report)
    assert results["models"]["teacher"]["agreement_with_teacher"] == 1.0
    assert results["models"]["student_kd"]["params"] < results["models"]["teacher"]["params"]
    assert len(results["history"]) == 1
    assert set(results["history"][0]) == {"epoch", "loss", "distill_loss", "student_loss", "accuracy"}


def test_fast_mode_still_learns(fast_run):
    """A hollow fast mode cannot pass: the teacher beats chance and the student's loss falls."""
    results = fast_run["results"]
    assert results["teacher_accuracy"] > 0.6
    steps = results["steps"]
    first = sum(s["total_loss"] for s in steps[:5]) / 5
    last = sum(s["total_loss"] for s in steps[-5:]) / 5
    assert last < first


def test_default_path_opens_no_connection(fast_run):
    assert fast_run["attempts"] == []


def test_saved_student_works_with_pipeline(fast_run):
    from transformers import pipeline

    classify = pipeline("text-classification", model=str(fast_run["out"] / "student"), device=-1)
    out = classify(["a warm, funny and beautifully acted film", "a tedious, joyless slog"])
    assert {o["label"] for o in out} <= {"negative", "positive"}


def test_evaluate_json(fast_run, capsys):
    code = cli.main(["evaluate", "--model", str(fast_run["out"] / "student"),
                     "--data", str(corpus_dir() / "validation.csv"), "--json"])
    assert code == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    payload = json.loads(last)
    assert payload["n"] == 780 and 0.0 <= payload["accuracy"] <= 1.0


def test_table_lists_the_four_headline_accuracies(fast_run):
    table = cli.format_table(fast_run["results"])
    assert table.splitlines()[0] == "| Teacher | Student before | Student after (KD) | Student CE-only |"
    assert "agreement with teacher" in table and "latency, batch 1 (CPU)" in table


def test_students_start_identical():
    from kd_helpers.models import load_classifier, make_student, minilm_dir

    base = load_classifier(minilm_dir())
    a, b = make_student(base, "base", seed=3), make_student(base, "base", seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
