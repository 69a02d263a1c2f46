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
    assert len(results["history"]) == 2
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


def test_the_guard_is_active_inside_module_fixtures(fast_run, monkeypatch):
    """The guard catches a deliberate connection attempt made on the default path (and it was on for fast_run)."""
    import socket

    from kd_helpers import experiment

    assert socket.socket.connect.__name__ == "_loopback_only"
    NETWORK_ATTEMPTS.clear()

    def phone_home():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.connect(("203.0.113.7", 443))  # TEST-NET-3: never routed; refused by the guard before any packet

    real_minilm_dir = experiment.minilm_dir
    monkeypatch.setattr(experiment, "minilm_dir", lambda: (phone_home(), real_minilm_dir())[1])
    with pytest.raises(ConnectionRefusedError):
        cli.main(["distill", "--fast", "--output-dir", "unused"])
    assert NETWORK_ATTEMPTS == [("203.0.113.7", 443)]
    NETWORK_ATTEMPTS.clear()


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
    assert "agreement with teacher" in table and "latency, batch 1 (CPU, median)" in table and "latency IQR" in table


def test_students_start_identical():
    from kd_helpers.models import load_classifier, make_student, minilm_dir

    base = load_classifier(minilm_dir())
    a, b = make_student(base, "base", seed=3), make_student(base, "base", seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_small_student_section_and_saved_model(fast_run, capsys):
    """results.json's small_student block (per-seed lists in seed order) and the saved tiny KD student."""
    small = fast_run["results"]["small_student"]
    assert small["seeds"] == [1, 2, 3]
    assert len(small["kd_test_accuracy"]) == len(small["ce_test_accuracy"]) == 3
    assert 0.0 <= small["paired_p_value"] <= 1.0 and 0.0 < small["teacher_test_accuracy"] <= 1.0
    assert small["student_params"] <= small["teacher_params"] / 5
    code = cli.main(["evaluate", "--model", str(fast_run["out"] / "student_small"),
                     "--data", str(corpus_dir() / "test.csv"), "--json"])
    assert code == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n"] == 720
    assert "Tiny student" in cli.format_table(fast_run["results"])
