"""The teacher-student loop: ``train_epoch``, ``evaluate_model`` and the outer ``distill`` loop.

Names and return values follow the reference experiment, so that its code and ours read side by side.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from kd_helpers.errors import NonFiniteLossError
from kd_helpers.loss import UNLABELLED, DistillationLoss, transfer_loss
from kd_helpers.precision import inference, train_autocast
from kd_helpers.seen_rows import seen_rows_only

INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


class CachedTeacher:
    """Stands in for the teacher model: returns its pre-computed logits for a batch's row indices.

    Pass it wherever a teacher model goes; ``train_epoch`` then runs no teacher forward at all.
    """

    def __init__(self, logits: torch.Tensor):
        self.logits = logits.float().cpu()
        self.num_labels = self.logits.shape[1]

    def __call__(self, batch: dict) -> torch.Tensor:
        return self.logits[batch["idx"].cpu()]

    def eval(self) -> CachedTeacher:  # mirrors nn.Module so calling code need not care
        return self


def model_inputs(model: nn.Module, batch: dict, device: torch.device) -> dict:
    """The tensors ``model.forward`` accepts (DistilBERT takes no ``token_type_ids``), on ``device``."""
    accepted = _forward_params(type(getattr(model, "module", model)))  # DistributedDataParallel: the model inside
    return {k: batch[k].to(device) for k in INPUT_KEYS if k in batch and k in accepted}


@functools.cache
def _forward_params(cls: type) -> frozenset:
    return frozenset(inspect.signature(cls.forward).parameters)


def get_teacher_logits(teacher_model, batch: dict, device: torch.device) -> torch.Tensor:
    """Live teacher forward under ``no_grad`` (the reference), or a lookup in a :class:`CachedTeacher`."""
    if isinstance(teacher_model, CachedTeacher):
        return teacher_model(batch).to(device)
    with torch.no_grad(), inference(device):
        return teacher_model(**model_inputs(teacher_model, batch, device)).logits.float()


def train_epoch(student_model, teacher_model, train_loader, optimizer, scheduler, criterion, device,
                progress: bool = True, desc: str = "train", bf16: bool = False) -> dict:
    """One epoch of distillation; returns average ``total_loss``, ``distill_loss``, ``student_loss``.

    The teacher stays in ``eval()`` and under ``no_grad``: only the student's parameters change.
    The per-step loss components are returned too, under ``steps``. ``bf16``: the student's forward under
    bf16 autocast (:mod:`kd_helpers.precision`); the loss is computed in fp32 either way.
    """
    student_model.train()
    teacher_model.eval()
    steps, last_finite = [], None
    bar = tqdm(train_loader, desc=desc, leave=False, disable=not progress)
    for step, batch in enumerate(bar, 1):
        teacher_logits = get_teacher_logits(teacher_model, batch, device)
        labels = batch["labels"].to(device)
        with train_autocast(device, bf16):
            student_logits = student_model(**model_inputs(student_model, batch, device)).logits
        total, distill, student = batch_loss(criterion, student_logits.float(), teacher_logits, labels)
        losses = {"total_loss": total.item(), "distill_loss": distill.item(), "student_loss": student.item()}
        if not all(math.isfinite(v) for v in losses.values()):
            raise NonFiniteLossError(f"non-finite loss at step {step} ({_fmt(losses)}); last finite losses: "
                                     f"{_fmt(last_finite) if last_finite else 'none'}. Lower --lr or check the data")
        last_finite = losses
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        steps.append(losses)
        bar.set_postfix(loss=f"{losses['total_loss']:.3f}", distill=f"{losses['distill_loss']:.3f}")
    return {**epoch_averages(steps), "steps": steps}


def batch_loss(criterion, student_logits, teacher_logits, labels) -> tuple:
    """``criterion``'s ``(total, distill, student)``; a batch with transfer-set rows (label ``UNLABELLED``) gets
    soft targets only for those rows (:func:`kd_helpers.loss.transfer_loss`)."""
    if (labels == UNLABELLED).any():
        return transfer_loss(criterion, student_logits, teacher_logits, labels)
    return criterion(student_logits, teacher_logits, labels)


def epoch_averages(steps: list) -> dict:
    """The mean of each loss component over an epoch's steps (what ``train_epoch`` returns)."""
    keys = ("total_loss", "distill_loss", "student_loss")
    return {key: sum(step[key] for step in steps) / max(len(steps), 1) for key in keys}


def evaluate_model(model, val_loader, device) -> float:
    """Accuracy: the share of validation rows whose arg-max logit is the true label."""
    model.eval()
    correct, total = 0, 0
    with torch.inference_mode(), inference(device):
        for batch in val_loader:
            logits = model(**model_inputs(model, batch, device)).logits
            predictions = logits.argmax(dim=-1).cpu()
            correct += (predictions == batch["labels"]).sum().item()
            total += batch["labels"].numel()
    return correct / max(total, 1)


@torch.inference_mode()
def predict_logits(model, loader, device, progress: bool = False, desc: str = "predict") -> torch.Tensor:
    """All logits of ``loader``'s rows, placed by each row's ``idx`` (so any batch order works)."""
    model.eval()
    parts, indices = [], []
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress):
        with inference(device):
            parts.append(model(**model_inputs(model, batch, device)).logits.float().cpu())
        indices.append(batch["idx"])
    logits, idx = torch.cat(parts), torch.cat(indices)
    if not torch.equal(idx.sort().values, torch.arange(len(idx))):
        raise ValueError("predict_logits: the loader's idx values are not each row exactly once")
    out = torch.empty_like(logits)
    out[idx] = logits
    return out


@dataclass
class TrainingRun:
    """What ``distill`` fills in: the per-epoch ``history`` and the per-step losses."""

    history: list = field(default_factory=list)
    steps: list = field(default_factory=list)
    cached: bool = False  # loaded from the cache instead of trained (transfer.train_method(cache=True))


def make_optimizer(params, lr: float) -> torch.optim.AdamW:
    """The students' AdamW (PyTorch's default weight decay, 0.01), with PyTorch's fused kernel where the weights
    live on a CPU or a CUDA card: the same update rule as the default multi-tensor kernel, fewer passes over
    memory. Measured 1.2x (base student) and 1.5x (compact) the samples/s here: benchmarks/README.md."""
    params = list(params)
    fused = all(p.device.type in FUSED_DEVICES for p in params)
    return torch.optim.AdamW(params, lr=lr, **({"fused": True} if fused else {}))


FUSED_DEVICES = ("cpu", "cuda")


def optimizer_name(device) -> str:
    """What results files record of :func:`make_optimizer` on ``device``: ``"adamw-fused"`` or ``"adamw"``."""
    return "adamw-fused" if torch.device(device).type in FUSED_DEVICES else "adamw"


def distill(student_model, teacher_model, train_loader: DataLoader, val_loader: DataLoader, device,
            epochs: int = 3, lr: float = 5e-5, temperature: float = 4.0, alpha: float = 0.7,
            warmup_ratio: float = 0.1, verbose: bool = True, progress: bool = True, bf16: bool = False,
            run: TrainingRun | None = None, on_epoch: Callable[[dict], None] | None = None) -> TrainingRun:
    """The reference's outer loop: ``train_epoch`` then ``evaluate_model`` each epoch, printing both.

    Ctrl-C (or the notebook's stop button) is not caught here: it stops training and propagates. Pass your own
    ``run`` to keep the finished epochs (``python -m kd_helpers distill`` does, and saves them).
    """
    criterion = DistillationLoss(temperature=temperature, alpha=alpha)
    student_model.to(device)  # before the optimizer: it picks its kernel by where the weights are
    if isinstance(teacher_model, nn.Module):
        teacher_model.to(device)
    run = TrainingRun() if run is None else run
    # only the word-embedding rows the training rows use get gradients: the same update, less work per step
    with seen_rows_only(student_model, train_loader) as rows:
        optimizer = make_optimizer([p for p in student_model.parameters() if p.requires_grad], lr)
        if rows is not None:
            rows.follow(optimizer)  # the other rows still get AdamW's weight decay
        total_steps = epochs * len(train_loader)
        scheduler = get_linear_schedule_with_warmup(optimizer, int(warmup_ratio * total_steps), total_steps)
        for epoch in range(1, epochs + 1):
            losses = train_epoch(student_model, teacher_model, train_loader, optimizer, scheduler, criterion,
                                 device, progress=progress, desc=f"epoch {epoch}/{epochs}", bf16=bf16)
            accuracy = evaluate_model(student_model, val_loader, device)
            record = {"epoch": epoch, "loss": losses["total_loss"], "distill_loss": losses["distill_loss"],
                      "student_loss": losses["student_loss"], "accuracy": accuracy}
            run.history.append(record)
            run.steps.extend({"epoch": epoch, **step} for step in losses["steps"])
            if verbose:
                print(f"Epoch {epoch}/{epochs}")
                print(f"Loss: {record['loss']:.4f}")
                print(f"  - Distillation Loss: {record['distill_loss']:.4f}")
                print(f"  - Student Loss: {record['student_loss']:.4f}")
                print(f"Validation Accuracy: {accuracy:.4f}")
            if on_epoch is not None:
                on_epoch(record)
    return run


def fine_tune(model, train_loader, device, epochs: int = 3, lr: float = 5e-5, warmup_ratio: float = 0.1,
              progress: bool = True, bf16: bool = False) -> None:
    """Plain cross-entropy fine-tuning (how the teacher is made). Ctrl-C propagates.

    The default multi-tensor AdamW, not :func:`make_optimizer`: the teacher's recipe is its cache key
    (:func:`kd_helpers.teacher.teacher_key`), and every published number rests on the teacher it makes."""
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    total_steps = epochs * len(train_loader)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(warmup_ratio * total_steps), total_steps)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(1, epochs + 1):
        model.train()
        bar = tqdm(train_loader, desc=f"teacher epoch {epoch}/{epochs}", leave=False, disable=not progress)
        for step, batch in enumerate(bar, 1):
            with train_autocast(device, bf16):
                logits = model(**model_inputs(model, batch, device)).logits
            loss = loss_fn(logits.float(), batch["labels"].to(device))
            if not math.isfinite(loss.item()):
                raise NonFiniteLossError(f"non-finite teacher loss at epoch {epoch}, step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")


def _fmt(losses: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in losses.items())
