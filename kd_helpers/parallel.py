"""Data-parallel distillation under ``accelerate launch`` or ``torchrun``: the plain loop with a few lines changed.

What changes against :func:`kd_helpers.train.train_epoch` (marked ``# DDP`` below):

- every batch of the single-process order is **split** across the processes (:class:`SplitBatches`): the shards are
  disjoint, cover every row, and every process takes the same number of steps;
- the student is wrapped by ``accelerator.prepare`` (DistributedDataParallel); the teacher is never wrapped (DDP
  refuses a module without trainable parameters): it is its cached logits, looked up by each row's ``idx``, so they
  follow the shards;
- each process's loss is weighted by its share of the step's rows, so that the gradient DDP averages is the
  gradient of the mean over the whole batch: the single-process step, up to floating-point summation order
  (dropout masks differ: every process draws its own);
- evaluation shards the validation rows the same way and gathers predictions with ``gather_for_metrics``;
- only the main process prints, writes files and saves the student.

accelerate's own sharding of a data loader repeats rows from the start to even out the last step, so its shards
overlap; splitting each batch instead keeps the single-process maths.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch.utils.data import DataLoader
from transformers import get_linear_schedule_with_warmup, set_seed

from kd_helpers import experiment, precision
from kd_helpers.cache import atomic_write_json, check_writable
from kd_helpers.config import pick_device
from kd_helpers.errors import NonFiniteLossError
from kd_helpers.loss import DistillationLoss
from kd_helpers.precision import inference, train_autocast
from kd_helpers.train import TrainingRun, batch_loss, epoch_averages, get_teacher_logits, make_optimizer, model_inputs


def launched_processes() -> int:
    """How many processes ``accelerate launch`` / ``torchrun`` started (1 for a plain ``python`` run)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


class SplitBatches:
    """The batches of ``batch_sampler`` (the single-process order), each split into ``num_processes`` parts.

    Process ``rank`` takes part ``rank`` of every batch (parts differ in size by at most one row). A batch with
    fewer rows than processes joins its neighbour, so that no process gets an empty part. The order is
    the single-process one, so a sampler that reshuffles every epoch reshuffles here too.
    """

    def __init__(self, batch_sampler, num_processes: int, rank: int):
        self.batch_sampler, self.num_processes, self.rank = batch_sampler, num_processes, rank

    def global_batches(self) -> list[list[int]]:
        batches = []
        for batch in map(list, self.batch_sampler):
            if batches and (len(batch) < self.num_processes or len(batches[-1]) < self.num_processes):
                batches[-1] += batch  # too few rows to give every process one: join the neighbour
            else:
                batches.append(batch)
        return batches

    def __iter__(self):
        for batch in self.global_batches():
            yield batch[self.rank::self.num_processes]

    def __len__(self) -> int:  # counted without drawing an order (that would move the sampler's generator)
        return len(self.batch_sampler)  # one more than the steps when a small batch was joined to another


def shard_loader(loader, accelerator: Accelerator):
    """The same ``DataLoader`` (dataset, collate function), taking this process's part of every batch."""
    batches = SplitBatches(loader.batch_sampler, accelerator.num_processes, accelerator.process_index)
    return DataLoader(loader.dataset, batch_sampler=batches, collate_fn=loader.collate_fn)


def train_epoch_ddp(accelerator: Accelerator, student_model, teacher_model, train_loader, optimizer, scheduler,
                    criterion, bf16: bool = False) -> dict:
    """:func:`kd_helpers.train.train_epoch` for one of several processes; returns the same averages (over every
    process's rows), the per-step losses, and the row ids this process trained on (``rows``)."""
    device = accelerator.device
    student_model.train()
    steps, rows = [], []
    for step, batch in enumerate(train_loader, 1):
        teacher_logits = get_teacher_logits(teacher_model, batch, device)  # cached: looked up by the rows' ids
        labels = batch["labels"].to(device)
        with train_autocast(device, bf16):
            student_logits = student_model(**model_inputs(student_model, batch, device)).logits
        total, distill, student = batch_loss(criterion, student_logits.float(), teacher_logits, labels)
        n_local = torch.tensor(float(len(labels)), device=device)
        stats = accelerator.reduce(torch.stack([n_local, *(t.detach() * n_local for t in (total, distill, student))]),
                                   reduction="sum")  # DDP: this step's rows and loss sums, over all processes
        losses = dict(zip(("total_loss", "distill_loss", "student_loss"), (stats[1:] / stats[0]).tolist(),
                          strict=True))  # the whole batch's means, as train_epoch logs them
        if not all(math.isfinite(v) for v in losses.values()):
            raise NonFiniteLossError(f"non-finite loss at step {step} ({losses}). Lower --lr or check the data")
        optimizer.zero_grad(set_to_none=True)
        weight = n_local * accelerator.num_processes / stats[0]  # DDP averages gradients: weight by share of rows
        accelerator.backward(total * weight)  # DDP: gradients are averaged across processes here
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        steps.append(losses)
        rows.extend(batch["idx"].tolist())
    return {**epoch_averages(steps), "steps": steps, "rows": rows}


def evaluate_model_ddp(accelerator: Accelerator, model, val_loader) -> float:
    """Accuracy over every validation row: each process predicts its shard, ``gather_for_metrics`` collects."""
    device = accelerator.device
    model.eval()
    predictions, labels = [], []
    with torch.inference_mode(), inference(device):
        for batch in val_loader:
            logits = model(**model_inputs(model, batch, device)).logits
            predictions.append(logits.argmax(dim=-1).cpu())
            labels.append(batch["labels"].cpu())
    mine = torch.stack([torch.cat(predictions), torch.cat(labels)], dim=1).tolist() if predictions else []
    pairs = accelerator.gather_for_metrics(mine, use_gather_object=True)  # DDP: every process's rows, once
    return sum(p == y for p, y in pairs) / max(len(pairs), 1)


def distill_ddp(accelerator: Accelerator, student_model, teacher_model, train_loader, val_loader,
                epochs: int = 3, lr: float = 5e-5, temperature: float = 4.0, alpha: float = 0.7,
                warmup_ratio: float = 0.1, bf16: bool = False, log=print) -> tuple[object, TrainingRun, list]:
    """:func:`kd_helpers.train.distill` across processes. ``train_loader``/``val_loader``: the single-process
    loaders (sharded here). Returns the wrapped student, the run, and the rows each epoch trained on here."""
    criterion = DistillationLoss(temperature=temperature, alpha=alpha)
    params = [p for p in student_model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, lr)
    total_steps = epochs * len(train_loader)  # as in the single-process loop
    scheduler = get_linear_schedule_with_warmup(optimizer, int(warmup_ratio * total_steps), total_steps)
    student_model, optimizer = accelerator.prepare(student_model, optimizer)  # DDP: wraps the student only
    train_shard, val_shard = shard_loader(train_loader, accelerator), shard_loader(val_loader, accelerator)
    run, rows = TrainingRun(), []
    for epoch in range(1, epochs + 1):
        losses = train_epoch_ddp(accelerator, student_model, teacher_model, train_shard, optimizer, scheduler,
                                 criterion, bf16=bf16)
        accuracy = evaluate_model_ddp(accelerator, student_model, val_shard)
        record = {"epoch": epoch, "loss": losses["total_loss"], "distill_loss": losses["distill_loss"],
                  "student_loss": losses["student_loss"], "accuracy": accuracy}
        run.history.append(record)
        run.steps.extend({"epoch": epoch, **step} for step in losses["steps"])
        rows.append(losses["rows"])
        log(f"Epoch {epoch}/{epochs}\nLoss: {record['loss']:.4f}\n  - Distillation Loss: {record['distill_loss']:.4f}"
            f"\n  - Student Loss: {record['student_loss']:.4f}\nValidation Accuracy: {accuracy:.4f}")
    return student_model, run, rows


def run_experiment_ddp(config, log=print, progress: bool = True) -> dict | None:
    """``python -m kd_helpers distill`` under a launcher: teacher, student before, KD and CE-only students trained
    data-parallel. The main process writes ``results.json`` (with ``world_size`` and the rows each process saw)
    and saves the student, and returns the results; the other processes return None.

    The metrics table (latency, calibration) and the tiny-student comparison need one process: they are skipped.
    """
    # cpu=True where the processes have no accelerator: accelerate then joins them over gloo (MULTI_CPU)
    accelerator = Accelerator(cpu=pick_device(config.device).type == "cpu")
    main = accelerator.is_main_process
    say = log if main else (lambda *args, **kwargs: None)
    out = check_writable(config.output_dir) if main else Path(config.output_dir)
    started = time.perf_counter()
    results = {"config": config.to_dict(), "interrupted": False, "environment": experiment.environment(),
               "world_size": accelerator.num_processes}
    try:
        with accelerator.main_process_first():  # the main process trains/caches the teacher and its logits first
            setup = experiment.prepare(config, log=say, progress=progress and main, device=accelerator.device)
        say(f"Data-parallel: {accelerator.num_processes} processes ({accelerator.distributed_type.value}, "
            f"{accelerator.device}); every batch of {config.batch_size} rows is split across them")
        results.update(timings=setup.timings, validation_rows=len(setup.splits["validation"]),
                       precision=precision.name(setup.bf16))
        results["teacher_accuracy"] = evaluate_model_ddp(accelerator, setup.teacher,
                                                         shard_loader(setup.teacher_val_loader, accelerator))
        say(f"Teacher accuracy: {results['teacher_accuracy']:.4f}")
        runs = [("student_after_accuracy", config.alpha, "history", "distill_s")]
        if config.baseline:
            runs.append(("baseline_accuracy", 0.0, "baseline_history", "baseline_s"))
        for key, alpha, history_key, timing_key in runs:
            student = experiment.new_student(setup)  # the same initial weights on every process
            if key == "student_after_accuracy":
                results["student_before_accuracy"] = evaluate_model_ddp(
                    accelerator, student, shard_loader(setup.val_loader, accelerator))
                say(f"Student before distillation: {results['student_before_accuracy']:.4f}")
                say(f"\nDistilling (T={config.temperature}, alpha={alpha} on the KL term)...")
            else:
                say("\nCE-only baseline (alpha=0, same initial student, same budget)...")
            set_seed(config.seed + accelerator.process_index)  # dropout: each process its own stream
            start = time.perf_counter()
            wrapped, run, rows = distill_ddp(accelerator, student, setup.cached_teacher, setup.train_loader(),
                                             setup.val_loader, epochs=config.epochs, lr=config.lr,
                                             temperature=config.temperature, alpha=alpha, bf16=setup.bf16, log=say)
            results["timings"][timing_key] = time.perf_counter() - start
            results[history_key] = run.history
            results[key] = run.history[-1]["accuracy"]
            if key == "student_after_accuracy":
                per_process = gather_object([[len(epoch_rows) for epoch_rows in rows]])
                results["rows_per_process"] = [sum(counts) for counts in per_process]
                results["rows_per_process_per_epoch"] = per_process
                results["first_epoch_rows"] = gather_object([sorted(rows[0])])
                if main:
                    experiment.save_student(accelerator.unwrap_model(wrapped), setup.tokenizer, out / "student")
        say("\nSkipped under several processes: the metrics table and the tiny-student comparison "
            "(run without a launcher for them)")
    except KeyboardInterrupt:
        results["interrupted"] = True
        say("Interrupted: saving what finished.")
    accelerator.wait_for_everyone()
    results["timings"] = {**results.get("timings", {}), "total_s": time.perf_counter() - started}
    if main:
        atomic_write_json(out / "results.json", results)
    accelerator.end_training()
    return results if main else None
