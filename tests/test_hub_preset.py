"""The hub preset (DistilBERT + GLUE SST-2) on local folders shaped like hub checkouts: no download."""

import json

import pytest

from kd_helpers import KDConfig
from kd_helpers.experiment import run_experiment

SENTENCES = [("a radiant, generous film", 1), ("dull and lifeless", 0), ("sharp, funny and humane", 1),
             ("a chore to sit through", 0), ("the cast is superb", 1), ("clumsy from start to finish", 0)]


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory):
    """A local copy laid out like the hub's GLUE repo: README.md with configs + sst2/*.parquet."""
    from datasets import Dataset

    root = tmp_path_factory.mktemp("glue")
    (root / "sst2").mkdir()
    rows = SENTENCES * 8
    for split, n in (("train", 40), ("validation", 8)):
        part = rows[:n]
        Dataset.from_dict({"sentence": [t for t, _ in part], "label": [y for _, y in part],
                           "idx": list(range(n))}).to_parquet(str(root / "sst2" / f"{split}-00000-of-00001.parquet"))
    (root / "README.md").write_text(
        "---\nconfigs:\n- config_name: sst2\n  data_files:\n  - split: train\n    path: sst2/train-*\n"
        "  - split: validation\n    path: sst2/validation-*\n---\n# GLUE (local test copy)\n")
    return root


def test_distilbert_sst2_preset_runs_on_local_checkouts(tmp_path, monkeypatch, glue_dir, tiny_distilbert_dir):
    monkeypatch.setenv("KD_SST2_DATASET", str(glue_dir))
    config = KDConfig(preset="distilbert-sst2", teacher=str(tiny_distilbert_dir), base=str(tiny_distilbert_dir),
                      fast=True, output_dir=str(tmp_path))
    assert config.data == "sst2"
    results = run_experiment(config, log=lambda *a: None, progress=False)
    assert results["interrupted"] is False
    assert len(results["history"]) == 2
    assert set(results["models"]) >= {"teacher", "student_kd", "student_ce"}
    saved = json.loads((tmp_path / "student" / "config.json").read_text())
    assert saved["model_type"] == "distilbert" and saved["n_layers"] == 2
