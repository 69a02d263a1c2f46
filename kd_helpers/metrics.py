"""Beyond accuracy: agreement, calibration, NLL, confusion matrix, size, latency and int8 quantisation."""

from __future__ import annotations

import copy
import io

import numpy as np
import torch
from sklearn.metrics import accuracy_score, confusion_matrix
from torch import nn
from torch.nn import functional as F

from kd_helpers.models import count_parameters
from kd_helpers.train import model_inputs, predict_logits


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


def nll(logits, labels) -> float:
    """Mean negative log-likelihood of the true labels, from the logits (no clipped probabilities)."""
    logits = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    return float(F.cross_entropy(logits, torch.as_tensor(np.asarray(labels), dtype=torch.long)))


def confusion(labels, predictions, num_classes: int = 2) -> list:
    return confusion_matrix(labels, predictions, labels=list(range(num_classes))).tolist()


def size_mb(model: nn.Module) -> float:
    """Size of the serialised state dict in MB (works for int8-quantised models too)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes / 1e6


@torch.inference_mode()
def latency(model: nn.Module, batch1: dict, batch32: dict, min_run_time: float = 1.0) -> dict:
    """CPU latency at batch 1 and throughput at batch 32, with ``torch.utils.benchmark``.

    ``blocked_autorange`` warms up, runs blocks of calls for at least ``min_run_time`` seconds on the current
    thread count, and reports the median and the interquartile range of the per-call time. A difference between
    two models smaller than their IQRs is not a difference.
    """
    from torch.utils import benchmark

    model = model.to("cpu").eval()
    device = torch.device("cpu")
    out = {}
    for name, batch in (("batch1", batch1), ("batch32", batch32)):
        inputs = model_inputs(model, batch, device)
        timer = benchmark.Timer(stmt="model(**inputs)", globals={"model": model, "inputs": inputs},
                                num_threads=torch.get_num_threads())
        measurement = timer.blocked_autorange(min_run_time=min_run_time)
        out[name] = (measurement.median, measurement.iqr, inputs["input_ids"].shape[0])
    median1, iqr1, _ = out["batch1"]
    median32, iqr32, rows = out["batch32"]
    return {"latency_ms_batch1": 1000 * median1, "latency_iqr_ms_batch1": 1000 * iqr1,
            "throughput_batch32": rows / median32, "throughput_iqr_batch32": rows * iqr32 / median32**2}


def quantize_int8(model: nn.Module) -> nn.Module:
    """Dynamic int8 quantisation of every Linear layer (weights int8, activations quantised on the fly; CPU)."""
    import warnings

    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():  # torch >= 2.10 announces a move of this API to torchao; it still works
        warnings.simplefilter("ignore", UserWarning)
        return quantize_dynamic(copy.deepcopy(model).to("cpu").eval(), {nn.Linear}, dtype=torch.qint8)


def model_report(logits: torch.Tensor, labels, teacher_predictions, model: nn.Module, batch1: dict,
                 batch32: dict, min_run_time: float = 1.0) -> dict:
    """Every metric for one model, from its validation logits and a latency run."""
    probs = torch.softmax(logits.double(), dim=-1).numpy()
    predictions = probs.argmax(axis=1)
    labels = np.asarray(labels)
    report = {
        "accuracy": accuracy(labels, predictions),
        "agreement_with_teacher": agreement(predictions, teacher_predictions),
        "ece": expected_calibration_error(probs, labels),
        "nll": nll(logits, labels),
        "confusion_matrix": confusion(labels, predictions, probs.shape[1]),
        "params": count_parameters(model),
        "size_mb": size_mb(model),
    }
    report.update(latency(model, batch1, batch32, min_run_time=min_run_time))
    return report


def metrics_table(setup, before, student_kd, student_ce=None) -> dict:
    """The metrics table of ``distill``: teacher, student before, KD student, CE-only student, int8 KD student.

    ``setup`` is an ``experiment.Setup``: validation rows and loaders for the teacher and the students.
    """
    min_run_time = 0.2 if setup.config.fast else 1.0
    labels = setup.splits["validation"]["label"]
    teacher_logits = predict_logits(setup.teacher, setup.teacher_val_loader, setup.device)
    teacher_predictions = teacher_logits.argmax(-1).numpy()
    models = {"teacher": (setup.teacher, setup.teacher_val_loader, setup.teacher_tokenizer),
              "student_before": (before, setup.val_loader, setup.tokenizer),
              "student_kd": (student_kd, setup.val_loader, setup.tokenizer)}
    if student_ce is not None:
        models["student_ce"] = (student_ce, setup.val_loader, setup.tokenizer)
    models["student_kd_int8"] = (quantize_int8(student_kd), setup.val_loader, setup.tokenizer)
    texts = setup.splits["validation"]["text"]
    report = {}
    for name, (model, loader, tokenizer) in models.items():
        device = torch.device("cpu") if name.endswith("int8") else setup.device
        logits = teacher_logits if name == "teacher" else predict_logits(model.to(device), loader, device)
        batch1 = tokenizer(texts[:1], return_tensors="pt")
        batch32 = tokenizer(texts[:32], return_tensors="pt", padding=True)
        report[name] = model_report(logits, labels, teacher_predictions, model, batch1, batch32, min_run_time)
        model.to(setup.device if not name.endswith("int8") else "cpu")
    return report
