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
        self.rows_seen: list[list[int]] = []  # per epoch, the ids of the rows this process trained on

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
            if idx is not None:
                epoch = int(self.state.epoch or 0)  # the epochs finished so far
                self.rows_seen.extend([] for _ in range(epoch + 1 - len(self.rows_seen)))
                self.rows_seen[epoch].extend(idx.tolist())
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict, *args, **kwargs) -> None:
        rows = self._sums["rows"]
        if rows and "loss" in logs:
            logs = {**logs, "distill_loss": self._sums["distill_loss"] / rows,
                    "student_loss": self._sums["student_loss"] / rows}
            self._sums = {"distill_loss": 0.0, "student_loss": 0.0, "rows": 0}
        super().log(logs, *args, **kwargs)


def run_trainer(config, log=print) -> dict | None:
    """``python -m kd_helpers trainer``: the KD student trained by :class:`DistillationTrainer` with the cached teacher
    logits, alone or under ``torchrun`` / ``accelerate launch``. The global batch is ``config.batch_size`` whatever
    the number of processes (each takes ``batch_size / processes`` rows per step). The main process writes
    ``results.json`` (accuracy, history, ``world_size``, the rows each process trained on) and saves the student.
    """
    import shutil
    import tempfile
    import time
    from pathlib import Path

    from accelerate import PartialState
    from accelerate.utils import gather_object
    from transformers import DataCollatorWithPadding, TrainingArguments

    from kd_helpers import experiment, precision
    from kd_helpers.cache import atomic_write_json, check_writable
    from kd_helpers.config import pick_device

    state = PartialState(cpu=pick_device(config.device).type == "cpu")
    world, main = state.num_processes, state.is_main_process
    if config.batch_size % world:
        raise KDError(f"--batch-size {config.batch_size}: must be divisible by the {world} processes")
    say = log if main else (lambda *args, **kwargs: None)
    out = check_writable(config.output_dir) if main else Path(config.output_dir)
    started = time.perf_counter()
    with state.main_process_first():
        setup = experiment.prepare(config, log=say, progress=main, device=state.device)
    student = experiment.new_student(setup)
    scratch = tempfile.mkdtemp(prefix="kd_trainer_")
    args = TrainingArguments(
        output_dir=scratch, per_device_train_batch_size=config.batch_size // world, per_device_eval_batch_size=64,
        num_train_epochs=config.epochs, learning_rate=config.lr, lr_scheduler_type="linear", warmup_steps=0.1,
        seed=config.seed, bf16=setup.bf16, use_cpu=setup.device.type == "cpu", eval_strategy="epoch",
        logging_strategy="epoch", save_strategy="no", report_to="none", disable_tqdm=not main,
        dataloader_num_workers=0)
    trainer = DistillationTrainer(
        model=student, args=args, train_dataset=setup.train_set, eval_dataset=setup.val_set,
        data_collator=DataCollatorWithPadding(setup.tokenizer, return_tensors="pt"),
        compute_metrics=lambda p: {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())},
        teacher_logits=setup.cached_teacher, temperature=config.temperature, alpha=config.alpha)
    say(f"Trainer: {world} process(es), {config.batch_size // world} rows each per step, {config.epochs} epochs")
    try:
        trainer.train()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    history = [{"epoch": round(e["epoch"]), "accuracy": e["eval_accuracy"]} for e in trainer.state.log_history
               if "eval_accuracy" in e]
    rows = gather_object([trainer.rows_seen])
    results = {"config": config.to_dict(), "engine": "transformers.Trainer (kd_helpers.hf.DistillationTrainer)",
               "environment": experiment.environment(), "world_size": world, "precision": precision.name(setup.bf16),
               "history": history, "student_after_accuracy": history[-1]["accuracy"],
               "rows_per_process": [sum(map(len, r)) for r in rows], "first_epoch_rows": [r[0] for r in rows],
               "train_rows": len(setup.train_set), "validation_rows": len(setup.val_set),
               "timings": {"total_s": time.perf_counter() - started}}
    if main:
        experiment.save_student(trainer.model, setup.tokenizer, out / "student")
        atomic_write_json(out / "results.json", results)
        say(f"Student after distillation (Trainer): {results['student_after_accuracy']:.4f}")
    state.wait_for_everyone()
    return results if main else None
