"""Beyond accuracy: agreement, calibration, NLL, confusion matrix, size, latency and int8 quantisation."""

from __future__ import annotations

import copy
import io
import statistics
import time

import numpy as np
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, log_loss
from torch import nn

from kd_helpers.models import count_parameters
from kd_helpers.train import model_inputs


def accuracy(labels, predictions) -> float:
    return float(accuracy_score(np.asarray(labels), np.asarray(predictions)))


def agreement(predictions_a, predictions_b) -> float:
    """Share of rows where two models predict the same class (a model agrees with itself: 1.0)."""
    a, b = np.asarray(predictions_a), np.asarray(predictions_b)
    return float((a == b).mean())


def reliability_bins(probs, labels, n_bins: int = 15) -> dict:
    """Per equal-width confidence bin: mean confidence, accuracy and row count (empty bins have count 0)."""
    probs, labels = np.asarray(probs, dtype=float), np.asarray(labels)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # bin i holds confidences in (edges[i], edges[i+1]]; a confidence of exactly 0 goes to bin 0
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    counts = np.bincount(which, minlength=n_bins)
    conf_sum = np.bincount(which, weights=confidence, minlength=n_bins)
    acc_sum = np.bincount(which, weights=correct, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"edges": edges, "count": counts, "confidence": conf_sum / counts, "accuracy": acc_sum / counts}


def expected_calibration_error(probs, labels, n_bins: int = 15) -> float:
    """ECE: the row-weighted mean gap between confidence and accuracy over equal-width confidence bins."""
    bins = reliability_bins(probs, labels, n_bins)
    filled = bins["count"] > 0
    gaps = np.abs(bins["accuracy"][filled] - bins["confidence"][filled])
    return float((gaps * bins["count"][filled]).sum() / bins["count"].sum())


def nll(probs, labels) -> float:
    """Mean negative log-likelihood of the true labels."""
    probs = np.asarray(probs, dtype=float)
    return float(log_loss(np.asarray(labels), probs, labels=list(range(probs.shape[1]))))


def confusion(labels, predictions, num_classes: int = 2) -> list:
    return confusion_matrix(labels, predictions, labels=list(range(num_classes))).tolist()


def size_mb(model: nn.Module) -> float:
    """Size of the serialised state dict in MB (works for int8-quantised models too)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes / 1e6


@torch.inference_mode()
def latency(model: nn.Module, batch1: dict, batch32: dict, repeats: int = 30, warmup: int = 5) -> dict:
    """CPU latency at batch 1 (median ms over ``repeats`` runs after warm-up) and throughput at batch 32."""
    model = model.to("cpu").eval()
    device = torch.device("cpu")
    one, many = model_inputs(model, batch1, device), model_inputs(model, batch32, device)
    for _ in range(warmup):
        model(**one)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(**one)
        times.append(time.perf_counter() - start)
    model(**many)
    big = []
    for _ in range(max(3, repeats // 10)):
        start = time.perf_counter()
        model(**many)
        big.append(time.perf_counter() - start)
    rows = many["input_ids"].shape[0]
    return {"latency_ms_batch1": 1000 * statistics.median(times), "throughput_batch32": rows / statistics.median(big)}


def quantize_int8(model: nn.Module) -> nn.Module:
    """Dynamic int8 quantisation of every Linear layer (weights int8, activations quantised on the fly; CPU)."""
    import warnings

    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():  # torch >= 2.10 announces a move of this API to torchao; it still works
        warnings.simplefilter("ignore", UserWarning)
        return quantize_dynamic(copy.deepcopy(model).to("cpu").eval(), {nn.Linear}, dtype=torch.qint8)


def model_report(logits: torch.Tensor, labels, teacher_predictions, model: nn.Module, batch1: dict,
                 batch32: dict, repeats: int = 30) -> dict:
    """Every metric for one model, from its validation logits and a latency run."""
    probs = torch.softmax(logits.double(), dim=-1).numpy()
    predictions = probs.argmax(axis=1)
    labels = np.asarray(labels)
    report = {
        "accuracy": accuracy(labels, predictions),
        "agreement_with_teacher": agreement(predictions, teacher_predictions),
        "ece": expected_calibration_error(probs, labels),
        "nll": nll(probs, labels),
        "confusion_matrix": confusion(labels, predictions, probs.shape[1]),
        "params": count_parameters(model),
        "size_mb": size_mb(model),
    }
    report.update(latency(model, batch1, batch32, repeats=repeats))
    return report
