"""The distillation loss: a temperature-softened KL term blended with ordinary cross-entropy."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from kd_helpers.errors import KDError

UNLABELLED = -1  # the label of a transfer-set row: it has none, only the teacher's logits


class DistillationLoss(nn.Module):
    """``total = alpha * distill + (1 - alpha) * student``, returned as ``(total, distill, student)``.

    - ``distill = KLDivLoss(batchmean)(log_softmax(s / T), softmax(t / T)) * T**2``: match the teacher's
      softened distribution; ``T**2`` keeps its gradients on the same scale as the CE term for any T.
    - ``student = CrossEntropy(s, labels)``: fit the hard labels.

    Convention: **alpha weights the KL (teacher) term**, as in the reference experiment. Hugging Face's and
    Keras's distillation examples put alpha on the CE term instead, so their alpha is our ``1 - alpha``.
    """

    def __init__(self, temperature: float = 4.0, alpha: float = 0.7):
        super().__init__()
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
            math.isfinite(temperature) and temperature > 0
        ):
            raise KDError(f"temperature={temperature!r}: must be a finite number > 0")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (0.0 <= alpha <= 1.0):
            raise KDError(f"alpha={alpha!r}: must be between 0 and 1 (it weights the KL term)")
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.kl = nn.KLDivLoss(reduction="batchmean")
        self.ce = nn.CrossEntropyLoss()

    def forward(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        _check_inputs(student_logits, teacher_logits, labels)
        T = self.temperature
        soft_student = F.log_softmax(student_logits / T, dim=-1)
        soft_teacher = F.softmax(teacher_logits.detach().to(student_logits.dtype) / T, dim=-1)
        distill = self.kl(soft_student, soft_teacher) * T**2
        student = self.ce(student_logits, labels)
        total = self.alpha * distill + (1.0 - self.alpha) * student
        return total, distill, student

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, alpha={self.alpha} (alpha weights the KL term)"


def _check_inputs(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor) -> None:
    if student_logits.dim() != 2:
        raise KDError(f"student_logits must be (batch, classes), got shape {tuple(student_logits.shape)}")
    if student_logits.shape != teacher_logits.shape:
        raise KDError(
            f"student_logits {tuple(student_logits.shape)} and teacher_logits {tuple(teacher_logits.shape)} "
            "must have the same shape (same batch, same number of classes)"
        )
    if labels.dim() != 1 or labels.shape[0] != student_logits.shape[0]:
        raise KDError(f"labels must hold one class per row: shape {tuple(labels.shape)} for "
                      f"{student_logits.shape[0]} rows")
    if labels.dtype in (torch.float16, torch.float32, torch.float64, torch.bfloat16):
        raise KDError(f"labels must be integer class ids, got dtype {labels.dtype}")
    num_classes = student_logits.shape[1]
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)][0].item()
        raise KDError(f"label {bad} is outside [0, {num_classes}) for {num_classes}-class logits")


def transfer_loss(criterion: DistillationLoss, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                  labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The loss of a batch that mixes labelled rows and transfer rows (``label == UNLABELLED``).

    Labelled rows get ``criterion``'s alpha blend; transfer rows the distillation term alone (their labels do
    not exist and are never read). ``total`` and ``distill`` average over all rows, ``student`` over the
    labelled rows (0 when there are none).
    """
    known = labels != UNLABELLED
    n, n_known = len(labels), int(known.sum())
    zero = student_logits.new_zeros(())
    total_k, distill_k, student_k = (criterion(student_logits[known], teacher_logits[known], labels[known])
                                     if n_known else (zero, zero, zero))
    distill_u = zero
    if n_known < n:
        T = criterion.temperature
        soft_student = F.log_softmax(student_logits[~known] / T, dim=-1)
        soft_teacher = F.softmax(teacher_logits[~known].detach().to(student_logits.dtype) / T, dim=-1)
        distill_u = criterion.kl(soft_student, soft_teacher) * T**2
    total = (n_known * total_k + (n - n_known) * distill_u) / n
    distill = (n_known * distill_k + (n - n_known) * distill_u) / n
    return total, distill, student_k
