"""The same distillation loss inside a ``transformers.Trainer``: for runs that want the Trainer's machinery
(``accelerate launch`` / ``torchrun``, gradient accumulation, checkpoints, callbacks).

``L = alpha * T² * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, labels)`` per row, as in
:class:`kd_helpers.loss.DistillationLoss` (alpha weights the KL term; HF and Keras examples put it on CE).

The teacher is either a model (frozen here, run under ``no_grad`` on every batch, never wrapped or optimised) or
its cached logits (a :class:`kd_helpers.train.CachedTeacher` or a tensor, looked up by the dataset's ``idx``
column, which this trainer keeps). Gradient accumulation is exact: the loss is summed over rows and divided by
``num_items_in_batch``, the rows of all micro-batches of one optimizer step, so a step's gradient is the mean over
its rows whatever the micro-batch sizes (the Trainer is told, via ``loss_is_scaled_for_ga``, not to divide again;
it counts the rows because classifiers' ``forward`` accepts loss keyword arguments). Under data parallelism the
row count covers every process (``average_tokens_across_devices``) and the loss is scaled back up by the number of
processes, as the Trainer does for models that compute their own loss.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F
from transformers import Trainer

from kd_helpers.errors import KDError
from kd_helpers.models import freeze
from kd_helpers.train import CachedTeacher, get_teacher_logits


def distillation_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                       temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row ``(T² · KL, CE)``; their batch means are ``DistillationLoss``'s distill and student terms."""
    log_p = F.log_softmax(student_logits / temperature, dim=-1)
    q = F.softmax(teacher_logits / temperature, dim=-1)
    kl = F.kl_div(log_p, q, reduction="none").sum(-1) * temperature**2
    return kl, F.cross_entropy(student_logits, labels, reduction="none")


class DistillationTrainer(Trainer):
    """A ``Trainer`` whose loss is kd_helpers' distillation loss; logs ``distill_loss`` and ``student_loss`` too."""

    loss_is_scaled_for_ga = True  # compute_loss divides by the step's row count itself (see the module docstring)

    def __init__(self, *args, teacher=None, teacher_logits=None, temperature: float = 4.0, alpha: float = 0.7,
                 **kwargs):
        if (teacher is None) == (teacher_logits is None):
            raise KDError("DistillationTrainer: pass exactly one of teacher= (a model) or teacher_logits=")
        if not 0.0 <= alpha <= 1.0 or not temperature > 0:
            raise KDError(f"DistillationTrainer: alpha={alpha!r} must be in [0, 1] and temperature={temperature!r} > 0")
        super().__init__(*args, **kwargs)
        if teacher_logits is not None:
            cached = isinstance(teacher_logits, CachedTeacher)
            self.teacher = teacher_logits if cached else CachedTeacher(teacher_logits)
        else:
            self.teacher = freeze(teacher).to(self.args.device)
        self.temperature, self.alpha = float(temperature), float(alpha)
        self._sums = {"distill_loss": 0.0, "student_loss": 0.0, "rows": 0}

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        self._signature_columns = list(dict.fromkeys([*self._signature_columns, "labels", "idx"]))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        idx = inputs.pop("idx", None)
        outputs = model(**inputs)
        if isinstance(self.teacher, CachedTeacher):
            if idx is None:
                raise KDError("DistillationTrainer with teacher_logits: the dataset needs its 'idx' column")
            teacher_logits = self.teacher({"idx": idx}).to(outputs.logits.device)
        else:
            teacher_logits = get_teacher_logits(self.teacher, inputs, outputs.logits.device)
        kl, ce = distillation_terms(outputs.logits.float(), teacher_logits.float(), labels, self.temperature)
        per_row = self.alpha * kl + (1.0 - self.alpha) * ce
        if num_items_in_batch is not None and model.training:
            loss = per_row.sum() / num_items_in_batch  # the step's rows: on every process when they are gathered
            if self.args.average_tokens_across_devices:
                loss = loss * self.accelerator.num_processes  # DDP averages gradients over processes: undo it
        elif model.training:  # no row count from the Trainer: mean of this micro-batch, scaled for accumulation
            loss = per_row.mean() / max(getattr(self, "current_gradient_accumulation_steps", 1), 1)
        else:
            loss = per_row.mean()
        if model.training:
            self._sums["distill_loss"] += kl.detach().sum().item()
            self._sums["student_loss"] += ce.detach().sum().item()
            self._sums["rows"] += len(labels)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict, *args, **kwargs) -> None:
        rows = self._sums["rows"]
        if rows and "loss" in logs:
            logs = {**logs, "distill_loss": self._sums["distill_loss"] / rows,
                    "student_loss": self._sums["student_loss"] / rows}
            self._sums = {"distill_loss": 0.0, "student_loss": 0.0, "rows": 0}
        super().log(logs, *args, **kwargs)
