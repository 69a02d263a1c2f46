"""Each metric on small cases computed by hand."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from kd_helpers.metrics import (
    accuracy,
    agreement,
    confusion,
    expected_calibration_error,
    latency,
    nll,
    quantize_int8,
    reliability_bins,
    size_mb,
)


def test_accuracy_and_agreement():
    assert accuracy([0, 1, 1, 0], [0, 1, 0, 0]) == 0.75
    predictions = [0, 1, 1, 0, 1]
    assert agreement(predictions, predictions) == 1.0  # the teacher agrees with itself
    assert agreement([0, 1, 1, 0], [1, 1, 0, 0]) == 0.5


def test_ece_zero_for_a_perfectly_calibrated_toy():
    # confidence 0.8 on 10 rows, 8 of them right; confidence 0.6 on 5 rows, 3 right
    probs = np.array([[0.8, 0.2]] * 10 + [[0.4, 0.6]] * 5)
    labels = np.array([0] * 8 + [1] * 2 + [1] * 3 + [0] * 2)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)


def test_ece_by_hand():
    # always 90 % confident, right half of the time: gap 0.4 everywhere
    probs = np.array([[0.9, 0.1]] * 4)
    labels = np.array([0, 1, 0, 1])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.4)
    bins = reliability_bins(probs, labels, n_bins=15)
    assert bins["count"].sum() == 4 and bins["count"][13] == 4  # 0.9 lies in (13/15, 14/15]
    assert len(bins["edges"]) == 16


def test_nll_by_hand_from_logits():
    probs = np.array([[0.8, 0.2], [0.25, 0.75]])
    assert nll(np.log(probs), [0, 1]) == pytest.approx(-(math.log(0.8) + math.log(0.75)) / 2)
    # a confident mistake: clipped probabilities would cap this at -log(1e-15); the logits give the true value
    assert nll(np.array([[0.0, 60.0]]), [0]) == pytest.approx(60.0, rel=1e-9)


def test_confusion_matrix():
    assert confusion([0, 0, 1, 1, 1], [0, 1, 1, 1, 0]) == [[1, 1], [1, 2]]


def test_int8_model_is_smaller_and_close():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 2))
    q = quantize_int8(model)
    x = torch.randn(8, 64)
    assert size_mb(q) < size_mb(model) / 2
    torch.testing.assert_close(q(x), model(x), atol=0.05, rtol=0.1)
    from kd_helpers.models import count_parameters

    assert count_parameters(q) == count_parameters(model) == 64 * 256 + 256 + 256 * 2 + 2  # the same weights


def test_latency_reports_both_numbers(tiny_bert_dir):
    from kd_helpers.models import load_classifier, load_tokenizer

    model, tokenizer = load_classifier(tiny_bert_dir), load_tokenizer(tiny_bert_dir)
    one = tokenizer(["a fine film"], return_tensors="pt")
    many = tokenizer(["a fine film"] * 32, return_tensors="pt", padding=True)
    result = latency(model, one, many, min_run_time=0.05)
    assert result["latency_ms_batch1"] > 0 and result["throughput_batch32"] > 0
    assert result["latency_iqr_ms_batch1"] >= 0 and result["throughput_iqr_batch32"] >= 0
