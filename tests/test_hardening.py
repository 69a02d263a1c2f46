"""Issue #14 (hardening): caches keyed by what they depend on, atomic folder swaps, one source of option
defaults, --fast that never overrides your options, the head warning kept, small-data warnings."""

import dataclasses
import logging
import os
import time

import pytest
import torch
from datasets import Dataset

from kd_helpers import KDConfig, cache, cli
from kd_helpers.config import DEFAULT_LR
from kd_helpers.models import load_classifier, load_tokenizer, make_student

# Names that exist only after the fix are imported inside the tests, so that on the code before it each test
# fails on its own behaviour (run against 27a068e: see the closing note of issue #14).

# --- 5. caches keyed by what they depend on ---------------------------------------------------------------


def test_teacher_logits_are_keyed_by_the_teachers_weights(tiny_bert_dir, tmp_path, monkeypatch):
    """Two teachers with the same name but different weights must never share cached logits."""
    from kd_helpers.models import state_dict_sha256
    from kd_helpers.teacher import cached_teacher_logits, logits_key

    monkeypatch.setenv("KD_CACHE_DIR", str(tmp_path))
    tokenizer = load_tokenizer(tiny_bert_dir)
    rows = Dataset.from_dict({"text": ["a fine film", "a dull one"], "label": [1, 0]})
    one = load_classifier(tiny_bert_dir).eval()
    two = make_student(one, "base", seed=7).eval()  # same architecture and config, another head
    assert state_dict_sha256(one) != state_dict_sha256(two)
    assert logits_key(one, tokenizer, rows, 32) != logits_key(two, tokenizer, rows, 32)
    first = cached_teacher_logits(one, tokenizer, rows, 32, device=torch.device("cpu"), log=lambda *_: None)
    second = cached_teacher_logits(two, tokenizer, rows, 32, device=torch.device("cpu"), log=lambda *_: None)
    assert not torch.equal(first.logits, second.logits)
    assert logits_key(one, tokenizer, rows, 32) != logits_key(one, tokenizer, rows, 16)  # max_length
    assert logits_key(one, tokenizer, rows, 32) != logits_key(one, tokenizer, rows.select([0]), 32)  # rows


def test_atomic_dir_swaps_without_a_window(tmp_path, monkeypatch):
    """While the old folder is deleted, the new complete one is already in place (no moment without a cache)."""
    final = tmp_path / "entry"
    cache.atomic_dir(final, lambda tmp: (tmp / "weights").write_text("old"))
    real_rmtree, seen = cache.shutil.rmtree, []

    def checking_rmtree(path, *args, **kwargs):
        seen.append((final / "weights").read_text() if (final / "weights").exists() else None)
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(cache.shutil, "rmtree", checking_rmtree)
    cache.atomic_dir(final, lambda tmp: (tmp / "weights").write_text("new"))
    assert seen and all(state == "new" for state in seen)
    assert (final / "weights").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]


def test_atomic_dir_swap_without_renameat2_and_with_a_concurrent_writer(tmp_path, monkeypatch):
    final = tmp_path / "entry"
    monkeypatch.setattr(cache, "_exchange", lambda a, b: False)  # the portable path
    cache.atomic_dir(final, lambda tmp: (tmp / "weights").write_text("old"))

    def build_while_another_writer_finishes(tmp):
        (tmp / "weights").write_text("mine")
        cache.atomic_dir(final, lambda other: (other / "weights").write_text("theirs"))

    cache.atomic_dir(final, build_while_another_writer_finishes)
    assert (final / "weights").read_text() == "mine"  # both succeed; the last one wins
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]


def test_stale_temporaries_are_cleaned_fresh_ones_kept(tmp_path):
    final = tmp_path / "entry"
    stale, fresh = tmp_path / ".entry.abc.tmp", tmp_path / ".entry.def.tmp"
    stale.mkdir()
    fresh.mkdir()
    (tmp_path / ".entry.json.x.tmp").write_text("another file's temporary")
    old = time.time() - 2 * cache.STALE_TMP_S
    os.utime(stale, (old, old))
    cache.atomic_dir(final, lambda tmp: (tmp / "weights").write_text("w"))
    assert not stale.exists() and fresh.exists() and (tmp_path / ".entry.json.x.tmp").exists()


# --- 7. one source of defaults; --fast never overrides what you gave -------------------------------------


def test_fast_mode_never_overrides_options_you_gave():
    from kd_helpers.config import FAST, FULL

    config = KDConfig(fast=True, epochs=5, batch_size=8, student="base", train_rows=1000, lr=1e-5)
    assert (config.epochs, config.batch_size, config.student, config.train_rows, config.lr) == (5, 8, "base", 1000,
                                                                                               1e-5)
    fast = KDConfig(fast=True)
    assert {k: getattr(fast, k) for k in FAST} == FAST and fast.lr == 3e-4
    full = KDConfig()
    assert {k: getattr(full, k) for k in FULL} == FULL and full.lr == DEFAULT_LR["base"]


def test_cli_fast_keeps_the_users_options(tmp_path):
    from kd_helpers.config import FAST

    args = cli.build_parser().parse_args(["distill", "--fast", "--epochs", "4", "--student", "tiny"])
    config = cli.config_from_args(args)
    assert config.fast and config.epochs == 4 and config.student == "tiny" and config.batch_size == FAST["batch_size"]


def test_distill_options_are_generated_from_kdconfig():
    """Every KDConfig field with option metadata is a distill option, and no option has a default of its own."""
    parser = cli.build_parser()
    distill = next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "distill")[1]
    dests = {action.dest: action for action in distill._actions}
    for f in dataclasses.fields(KDConfig):
        if "help" in f.metadata:
            assert f.name in dests, f.name
    assert cli.config_from_args(parser.parse_args(["distill"])) == KDConfig.from_env()
    for name in ("teacher_epochs", "teacher_lr", "train_rows", "val_rows", "group_by_length", "freeze_embeddings",
                 "base"):
        assert name in dests  # knobs that existed in KDConfig but were not reachable from the command line


def test_kd_cpu_bf16_is_read_at_the_top_only(monkeypatch):
    monkeypatch.setenv("KD_CPU_BF16", "0")
    assert KDConfig.from_env().bf16 is False
    monkeypatch.setenv("KD_CPU_BF16", "1")
    assert KDConfig.from_env().bf16 is True
    monkeypatch.delenv("KD_CPU_BF16")
    assert KDConfig.from_env().bf16 is None
    monkeypatch.setenv("KD_CPU_BF16", "maybe")
    with pytest.raises(ValueError, match="KD_CPU_BF16='maybe'"):
        KDConfig.from_env()


# --- 7. the "newly initialised head" report is shown ------------------------------------------------------


def test_new_head_report_is_not_silenced(tiny_bert_dir, tmp_path, capfd, caplog):
    """Loading a checkpoint without a classification head says so: it teaches what an un-fine-tuned student is."""
    from transformers import AutoModel

    bare = tmp_path / "bare"
    AutoModel.from_pretrained(tiny_bert_dir).save_pretrained(bare)  # encoder only, no classifier weights
    with caplog.at_level(logging.WARNING):
        load_classifier(bare, num_labels=2)
    captured = capfd.readouterr()
    text = (captured.out + captured.err + caplog.text).lower()
    assert "classifier.weight" in text and ("newly initialized" in text or "missing" in text)


# --- 4. small data warns, every accuracy table states its noise ------------------------------------------


def test_accuracy_table_states_its_standard_error_and_warns_on_small_data():
    small = cli.format_table({"teacher_accuracy": 0.655, "student_before_accuracy": 0.5, "validation_rows": 29,
                              "student_after_accuracy": 0.483, "baseline_accuracy": 0.5})
    assert small.count("warning: only 29 validation rows: one accuracy's standard error is about 8.8 points") == 1
    large = cli.format_table({"teacher_accuracy": 0.856, "student_before_accuracy": 0.5, "validation_rows": 780,
                              "student_after_accuracy": 0.856, "baseline_accuracy": 0.856})
    assert "warning" not in large and "standard error is about 1.3 points" in large
