"""The experiment pieces the notebooks use: identical fresh students, learning-rate defaults."""

import pytest
import torch

from kd_helpers import KDConfig
from kd_helpers.experiment import new_student, prepare
from kd_helpers.transfer import labelled_mask


@pytest.fixture(scope="module")
def setup():
    return prepare(KDConfig(fast=True), log=lambda *a: None, progress=False)


def test_student_learning_rate_defaults_by_student_and_yields_to_the_user():
    assert KDConfig().lr == 5e-5  # the reference's, for the same-size student
    assert KDConfig(student="compact").lr == 2e-4
    assert KDConfig(student="compact", lr=1e-5).lr == 1e-5
    assert KDConfig(fast=True).lr == 3e-4
    assert KDConfig(student="tiny").lr == KDConfig(student="tiny", fast=True).lr == 5e-4
    assert KDConfig(student="tiny", fast=True).student == "tiny"  # fast mode shrinks the base student only


def test_fresh_students_start_identical(setup):
    a, b = new_student(setup), new_student(setup)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert a.config.id2label == {0: "negative", 1: "positive"}


def test_labelled_mask_is_seeded_and_sized():
    known = labelled_mask(400, 0.1, seed=42)
    assert int(known.sum()) == 40 and torch.equal(known, labelled_mask(400, 0.1, seed=42))
    assert not torch.equal(known, labelled_mask(400, 0.1, seed=43))
