"""The teacher-student loop: ``train_epoch``, ``evaluate_model`` and the outer ``distill`` loop.

Names and return values follow the reference experiment, so that its code and ours read side by side.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from kd_helpers.config import env_flag
from kd_helpers.errors import NonFiniteLossError
from kd_helpers.loss import UNLABELLED, DistillationLoss, transfer_loss

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
    accepted = _forward_params(type(model))
    return {k: batch[k].to(device) for k in INPUT_KEYS if k in batch and k in accepted}


def _forward_params(cls: type) -> frozenset:
    return frozenset(inspect.signature(cls.forward).parameters)


def get_teacher_logits(teacher_model, batch: dict, device: torch.device) -> torch.Tensor:
    """Live teacher forward under ``no_grad`` (the reference), or a lookup in a :class:`CachedTeacher`."""
    if isinstance(teacher_model, CachedTeacher):
        return teacher_model(batch).to(device)
    with torch.no_grad():
        return teacher_model(**model_inputs(teacher_model, batch, device)).logits.float()


def autocast(device: torch.device, cpu_bf16: bool = False):
    """bf16 autocast on CUDA; on the CPU only if ``cpu_bf16``; full precision on MPS.

    ``train_epoch`` sets ``cpu_bf16`` from ``KD_CPU_BF16=1``: an opt-in, measured to pay on a CPU with bf16
    instructions (1.3x the samples/s at the same accuracy on an AVX512-BF16 CPU, benchmarks/README.md) and its
    results differ from fp32 in the last digits. Teacher training, teacher logits and evaluation stay in fp32.
    """
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if device.type == "cpu" and cpu_bf16:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()


def cpu_bf16_requested() -> bool:
    """True when ``KD_CPU_BF16`` is 1/true/yes/on."""
    return env_flag("KD_CPU_BF16")


def train_epoch(student_model, teacher_model, train_loader, optimizer, scheduler, criterion, device,
                progress: bool = True, desc: str = "train") -> dict:
    """One epoch of distillation; returns average ``total_loss``, ``distill_loss``, ``student_loss``.

    The teacher stays in ``eval()`` and under ``no_grad``: only the student's parameters change.
    The per-step loss components are returned too, under ``steps``.
    """
    student_model.train()
    teacher_model.eval()
    sums = {"total_loss": 0.0, "distill_loss": 0.0, "student_loss": 0.0}
    steps, last_finite = [], None
    bar = tqdm(train_loader, desc=desc, leave=False, disable=not progress)
    bf16 = cpu_bf16_requested()
    for step, batch in enumerate(bar, 1):
        teacher_logits = get_teacher_logits(teacher_model, batch, device)
        labels = batch["labels"].to(device)
        with autocast(device, cpu_bf16=bf16):
            student_logits = student_model(**model_inputs(student_model, batch, device)).logits
        if (labels == UNLABELLED).any():  # transfer-set rows in the batch: soft targets only for them
            total, distill, student = transfer_loss(criterion, student_logits.float(), teacher_logits, labels)
        else:
            total, distill, student = criterion(student_logits.float(), teacher_logits, labels)
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
        for key, value in losses.items():
            sums[key] += value
        steps.append(losses)
        bar.set_postfix(loss=f"{losses['total_loss']:.3f}", distill=f"{losses['distill_loss']:.3f}")
    n = max(len(steps), 1)
    return {**{key: value / n for key, value in sums.items()}, "steps": steps}


def evaluate_model(model, val_loader, device) -> float:
    """Accuracy: the share of validation rows whose arg-max logit is the true label."""
    model.eval()
    correct, total = 0, 0
    with torch.inference_mode():
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
        with autocast(device):
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
    """What ``distill`` returns: the per-epoch ``history``, per-step losses, and whether it was interrupted."""

    history: list = field(default_factory=list)
    steps: list = field(default_factory=list)
    interrupted: bool = False


def distill(student_model, teacher_model, train_loader: DataLoader, val_loader: DataLoader, device,
            epochs: int = 3, lr: float = 5e-5, temperature: float = 4.0, alpha: float = 0.7,
            warmup_ratio: float = 0.1, verbose: bool = True, progress: bool = True,
            on_epoch: Callable[[dict], None] | None = None) -> TrainingRun:
    """The reference's outer loop: ``train_epoch`` then ``evaluate_model`` each epoch, printing both.

    Ctrl-C (or the notebook's stop button) ends training early: finished epochs are kept and the run is
    marked ``interrupted``.
    """
    criterion = DistillationLoss(temperature=temperature, alpha=alpha)
    params = [p for p in student_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    total_steps = epochs * len(train_loader)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(warmup_ratio * total_steps), total_steps)
    student_model.to(device)
    if isinstance(teacher_model, nn.Module):
        teacher_model.to(device)
    run = TrainingRun()
    try:
        for epoch in range(1, epochs + 1):
            losses = train_epoch(student_model, teacher_model, train_loader, optimizer, scheduler, criterion,
                                 device, progress=progress, desc=f"epoch {epoch}/{epochs}")
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
    except KeyboardInterrupt:
        run.interrupted = True
        if verbose:
            print(f"Interrupted: kept {len(run.history)} finished epoch(s).")
    return run


def fine_tune(model, train_loader, device, epochs: int = 3, lr: float = 5e-5, warmup_ratio: float = 0.1,
              progress: bool = True) -> bool:
    """Plain cross-entropy fine-tuning (how the teacher is made). Returns False if interrupted."""
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    total_steps = epochs * len(train_loader)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(warmup_ratio * total_steps), total_steps)
    loss_fn = nn.CrossEntropyLoss()
    try:
        for epoch in range(1, epochs + 1):
            model.train()
            bar = tqdm(train_loader, desc=f"teacher epoch {epoch}/{epochs}", leave=False, disable=not progress)
            for step, batch in enumerate(bar, 1):
                with autocast(device):
                    logits = model(**model_inputs(model, batch, device)).logits
                loss = loss_fn(logits.float(), batch["labels"].to(device))
                if not math.isfinite(loss.item()):
                    raise NonFiniteLossError(f"non-finite teacher loss at epoch {epoch}, step {step}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                bar.set_postfix(loss=f"{loss.item():.3f}")
    except KeyboardInterrupt:
        return False
    return True


def _fmt(losses: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in losses.items())
