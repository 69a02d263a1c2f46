"""Bad input gives one clear line (exit 2), caches are atomic and checked, weights are verified, Ctrl-C is safe."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, run_cli

from kd_helpers import KDConfig, KDError, cli
from kd_helpers.cache import atomic_dir, atomic_write_json, load_tensor, read_json_checked, save_tensor
from kd_helpers.data import load_table

GOOD = "text,label\n\"a gorgeous, moving film\",1\na tedious slog,0\n"
BAD_FILES = {
    "empty.csv": (b"", "file is empty"),
    "header_only.csv": (b"text,label\n", "no data rows"),
    "no_label.csv": (b"text,score\nfine film,1\n", "no 'label' column"),
    "no_text.csv": (b"review,label\nfine film,1\n", "no 'text' (or 'sentence') column"),
    "label_word.csv": (b"text,label\nfine film,positive\n", "row 1: column 'label' value 'positive' is not an integer"),
    "label_float.csv": (b"text,label\nfine film,1.0\n", "is not an integer"),
    "label_range.csv": (b"text,label\nfine film,1\nbad film,2\n", "row 2: label 2 is outside"),
    "empty_text.csv": (b"text,label\nfine film,1\n  ,0\n", "row 2: column 'text' is empty"),
    "latin1.csv": ("text,label\ncaf\u00e9 scenes,1\n".encode("latin-1"), "line 2 is not valid UTF-8"),
    "quoting.csv": (b'text,label\n"an unclosed quote,1\nfine,0\n', "malformed CSV"),
    "fields.csv": (b"text,label\nfine, really fine,1\n", "row 1 has 3 fields"),
    "bad.jsonl": (b'{"text": "fine", "label": 1}\n{"text": oops}\n', "line 2 is not valid JSON"),
    "data.txt": (b"whatever", "unsupported file type"),
    "pretty.json": (b'{\n  "text": "fine",\n  "label": 1\n}\n', "read as JSON Lines (one object per line) or as one"),
    "broken_array.json": (b'[{"text": "fine", "label": 1},', "not valid JSON"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_data_files_name_the_problem(tmp_path, name):
    content, message = BAD_FILES[name]
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(KDError) as err:
        load_table(path)
    assert message in str(err.value) and str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(KDError, match="file not found"):
        load_table(tmp_path / "nope.csv")
    with pytest.raises(KDError, match="is a folder"):
        load_table(tmp_path)


def test_good_files_load(tmp_path):
    (tmp_path / "a.csv").write_text(GOOD)
    (tmp_path / "b.tsv").write_text("sentence\tlabel\nnull\t1\nn/a\t0\n")
    (tmp_path / "c.jsonl").write_text('{"text": "fine", "label": 1}\n{"text": "poor", "label": 0}\n')
    assert load_table(tmp_path / "a.csv")["text"] == ["a gorgeous, moving film", "a tedious slog"]
    assert load_table(tmp_path / "b.tsv")["text"] == ["null", "n/a"]  # words, not missing values
    assert load_table(tmp_path / "c.jsonl")["label"] == [1, 0]
    (tmp_path / "d.csv").write_text("text, label\nfine film, 1\n")  # spaces after the commas of the header
    assert load_table(tmp_path / "d.csv")["label"] == [1]
    (tmp_path / "e.json").write_text('[{"text": "fine", "label": 1}, {"text": "poor", "label": 0}]')
    assert load_table(tmp_path / "e.json")["text"] == ["fine", "poor"]


def test_unwritable_output_dir_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert cli.main(["distill", "--fast", "--output-dir", str(blocker / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --output-dir {blocker / 'out'}: cannot write there") and err.count("\n") == 1


@pytest.mark.parametrize("args, message", [
    (["--temperature", "0"], "--temperature 0.0: must be a finite number > 0"),
    (["--temperature", "nan"], "--temperature nan"),
    (["--alpha", "1.5"], "--alpha 1.5: must be between 0 and 1"),
    (["--epochs", "0"], "--epochs 0: must be an integer >= 1"),
    (["--batch-size", "0"], "--batch-size 0"),
    (["--lr", "-1"], "--lr -1.0: must be a finite number > 0"),
    (["--max-length", "2"], "--max-length 2"),
    (["--temperature", "hot"], "argument --temperature: invalid float value: 'hot'"),
    (["--student", "huge"], "argument --student: invalid choice"),
    (["--device", "tpu"], "--device 'tpu'"),
])
def test_bad_options_exit_2_with_one_line(capsys, args, message):
    try:
        code = cli.main(["distill", "--fast", *args])
    except SystemExit as exc:  # argparse's own checks (types, choices)
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_cli_bad_data_and_model(tmp_path, capsys, tiny_bert_dir):
    bad = tmp_path / "bad.csv"
    bad.write_bytes(BAD_FILES["label_word.csv"][0])
    assert cli.main(["distill", "--fast", "--data", str(bad)]) == 2
    assert cli.main(["evaluate", "--model", str(tiny_bert_dir), "--data", str(bad)]) == 2
    assert cli.main(["evaluate", "--model", str(tmp_path), "--data", str(bad)]) == 2  # not a model folder
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and all(line.startswith("error: ") for line in errors)
    assert "not a model folder" in errors[2]


def test_pickle_only_model_folder_is_refused(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    good = tmp_path / "data.csv"
    good.write_text(GOOD)
    assert cli.main(["evaluate", "--model", str(tmp_path), "--data", str(good)]) == 2
    assert "only safetensors" in capsys.readouterr().err


def test_teacher_student_label_mismatch(tmp_path, minilm_path):
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from kd_helpers.experiment import prepare

    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, num_labels=3)
    BertForSequenceClassification(config).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(tmp_path)
    with pytest.raises(KDError, match="3 labels, the student has 2"):
        prepare(KDConfig(fast=True, teacher=str(tmp_path)), log=lambda *a: None, progress=False)


def test_subprocess_bad_input_has_no_traceback(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_bytes(BAD_FILES["quoting.csv"][0])
    for args in (["distill", "--data", str(bad)], ["distill", "--alpha", "2"], ["evaluate", "--model", "x"]):
        proc = run_cli(*args, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
        assert "Traceback" not in proc.stderr


# --- caches -------------------------------------------------------------------------------------------

def test_json_checksum_detects_edits(tmp_path):
    path = tmp_path / "r.json"
    atomic_write_json(path, {"accuracy": 0.9, "history": [1, 2]})
    assert read_json_checked(path) == {"accuracy": 0.9, "history": [1, 2]}
    path.write_text(path.read_text().replace("0.9", "0.99"))
    with pytest.raises(ValueError, match="checksum"):
        read_json_checked(path)
    path.write_text(path.read_text()[:20])
    with pytest.raises(ValueError, match="not a valid"):
        read_json_checked(path)


def test_tensor_cache_detects_corruption_and_wrong_key(tmp_path):
    path = tmp_path / "t.safetensors"
    save_tensor(path, torch.arange(12.0).reshape(6, 2), key="k1")
    torch.testing.assert_close(load_tensor(path, "k1"), torch.arange(12.0).reshape(6, 2))
    with pytest.raises(ValueError, match="key"):
        load_tensor(path, "k2")
    raw = bytearray(path.read_bytes())
    raw[-4:] = b"\x00\x00\x80\x7f"
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError):
        load_tensor(path, "k1")
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="unreadable"):
        load_tensor(path, "k1")


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    def build(tmp: Path):
        (tmp / "half.bin").write_bytes(b"x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_dir(tmp_path / "final", build)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_teacher_and_logits_are_rebuilt(tmp_path, monkeypatch):
    from kd_helpers.experiment import prepare

    monkeypatch.setenv("KD_CACHE_DIR", str(tmp_path))
    config = KDConfig(fast=True, train_rows=48, val_rows=16)
    config.teacher_epochs = 1
    messages = []
    first = prepare(config, log=messages.append, progress=False)
    assert not first.teacher_info["cached"]
    (weights,) = (tmp_path / "teachers").glob("*/model.safetensors")
    weights.write_bytes(weights.read_bytes()[:1000])
    (logits,) = (tmp_path / "logits").glob("*.safetensors")
    logits.write_bytes(b"broken")
    second = prepare(config, log=messages.append, progress=False)
    assert any("teacher cache" in m and "retraining" in m for m in messages)
    assert any("teacher logits cache is unusable" in m for m in messages)
    torch.testing.assert_close(first.cached_teacher.logits, second.cached_teacher.logits, atol=1e-4, rtol=1e-4)
    third = prepare(config, log=messages.append, progress=False)
    assert third.teacher_info["cached"]


# --- weights and security -----------------------------------------------------------------------------

def test_minilm_sha256_is_verified(monkeypatch):
    from kd_helpers import models

    models.minilm_dir()  # the real file passes
    monkeypatch.setattr(models, "MINILM_SHA256", "0" * 64)
    with pytest.raises(KDError, match="does not match"):
        models.minilm_dir()


def test_no_remote_code_and_safe_torch_load():
    for path in (ROOT / "kd_helpers").rglob("*.py"):
        source = path.read_text()
        assert "trust_remote_code=True" not in source, path
        for line in source.splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{path}: {line.strip()}"


def test_hub_preset_offline_is_one_clear_line(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("KD_SST2_DATASET", raising=False)
    assert cli.main(["distill", "--preset", "distilbert-sst2", "--fast"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "HF_HUB_OFFLINE" in err and "--data reviews" in err
    assert err.count("\n") == 1
    assert cli.main(["distill", "--preset", "distilbert-sst2", "--data", "reviews", "--fast"]) == 2
    err = capsys.readouterr().err
    assert "Hugging Face Hub" in err and "--preset minilm" in err


# --- interruption -------------------------------------------------------------------------------------

def test_ctrl_c_saves_finished_work_and_rerun_resumes(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # the tests' shared cache: the fast teacher is usually there
    cmd = [sys.executable, "-m", "kd_helpers", "distill", "--fast", "--output-dir", str(out)]
    # SIGINT as a terminal delivers it: a shell's background job inherits it ignored, and Python keeps it so
    restore = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
                            preexec_fn=restore)
    seen = ""
    deadline = time.time() + 900  # a cold cache trains the fast teacher first
    while "Distilling" not in seen and time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen += line
    assert "Distilling" in seen, seen + proc.stderr.read()
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    assert proc.returncode == 130
    results = read_json_checked(out / "results.json")
    assert results["interrupted"] is True and "teacher_accuracy" in results
    rerun = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert "loaded from cache" in rerun.stdout
    assert read_json_checked(out / "results.json")["interrupted"] is False
