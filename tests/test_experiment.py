"""The experiment pieces the notebooks use: identical fresh students and the few-label regime."""

import dataclasses

import pytest
import torch

from kd_helpers import KDConfig
from kd_helpers.experiment import labelled_mask, new_student, prepare, train_few_labels


@pytest.fixture(scope="module")
def setup():
    return prepare(KDConfig(fast=True), log=lambda *a: None, progress=False)


def test_student_learning_rate_defaults_by_student_and_yields_to_the_user():
    assert KDConfig().lr == 5e-5  # the reference's, for the same-size student
    assert KDConfig(student="compact").lr == 2e-4
    assert KDConfig(student="compact", lr=1e-5).lr == 1e-5
    assert KDConfig(fast=True).lr == 3e-4


def test_fresh_students_start_identical(setup):
    a, b = new_student(setup), new_student(setup)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert a.config.id2label == {0: "negative", 1: "positive"}


def test_few_labels_never_reads_hidden_labels(setup):
    """Poison every hidden label: the KD path must still train (it never reads them), and CE-only too."""
    known = labelled_mask(len(setup.train_set), 0.1, setup.config.seed)
    poisoned = setup.train_set.map(lambda row: {"labels": row["labels"] if known[row["idx"]] else 99})
    bad = dataclasses.replace(setup, train_set=poisoned)
    kd = train_few_labels(bad, fraction=0.1, use_teacher=True, steps=6, progress=False)
    ce = train_few_labels(bad, fraction=0.1, use_teacher=False, steps=6, progress=False)
    assert kd["labelled_rows"] == ce["labelled_rows"] == int(known.sum()) == 40
    assert kd["steps"] == ce["steps"] == 6
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in (kd, ce))
