"""kd_helpers.hf.DistillationTrainer: the same loss as DistillationLoss, exact under gradient accumulation, with a
live teacher or cached logits, and a Trainer run that logs the loss components."""

import pytest
import torch
from torch import nn
from transformers import DataCollatorWithPadding, TrainingArguments

from kd_helpers import DistillationLoss, KDError
from kd_helpers.data import load_splits, make_loader, subsample, tokenize
from kd_helpers.hf import DistillationTrainer
from kd_helpers.models import freeze, load_classifier, load_tokenizer, make_student
from kd_helpers.train import CachedTeacher, predict_logits

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def parts(tiny_bert_dir):
    tokenizer = load_tokenizer(tiny_bert_dir)
    rows = tokenize(subsample(load_splits("reviews")["train"], 24, 0), tokenizer, 32)
    teacher = freeze(load_classifier(tiny_bert_dir))
    return {"tokenizer": tokenizer, "rows": rows, "teacher": teacher,
            "collate": DataCollatorWithPadding(tokenizer, return_tensors="pt")}


def _student(parts):
    student = make_student(load_classifier(parts["teacher"].name_or_path), "base", seed=3)
    for module in student.modules():  # no dropout: the same inputs give the same logits in training mode
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return student.train()


def _trainer(parts, tmp_path, student, **kwargs):
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", per_device_train_batch_size=8,
                             gradient_accumulation_steps=2, max_steps=1, logging_steps=1, save_strategy="no",
                             disable_tqdm=True, learning_rate=1e-4)
    return DistillationTrainer(model=student, args=args, train_dataset=parts["rows"],
                               data_collator=parts["collate"], temperature=4.0, alpha=0.7, **kwargs)


def _batch(parts, rows):
    return parts["collate"]([parts["rows"][i] for i in rows])


def test_same_loss_as_distillation_loss_and_exact_accumulation(parts, tmp_path):
    student = _student(parts)
    trainer = _trainer(parts, tmp_path, student, teacher=parts["teacher"])
    big, small = _batch(parts, range(8)), _batch(parts, range(8, 13))
    whole = _batch(parts, range(13))
    reference = DistillationLoss(4.0, 0.7)
    with torch.no_grad():
        expected = reference(student(**{k: v for k, v in whole.items() if k not in ("labels", "idx")}).logits,
                             parts["teacher"](**{k: v for k, v in whole.items() if k not in ("labels", "idx")}).logits,
                             whole["labels"])[0]
        one = trainer.compute_loss(student, dict(whole), num_items_in_batch=13)
        accumulated = (trainer.compute_loss(student, dict(big), num_items_in_batch=13)
                       + trainer.compute_loss(student, dict(small), num_items_in_batch=13))
    torch.testing.assert_close(one, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(accumulated, expected, rtol=1e-5, atol=1e-6)  # micro-batches of 8 and 5 rows


def test_cached_logits_give_the_live_teachers_loss(parts, tmp_path):
    student = _student(parts)
    cached = CachedTeacher(predict_logits(parts["teacher"], make_loader(parts["rows"], parts["tokenizer"]), CPU))
    live = _trainer(parts, tmp_path / "live", student, teacher=parts["teacher"])
    lookup = _trainer(parts, tmp_path / "cached", student, teacher_logits=cached)
    batch = _batch(parts, [5, 1, 17, 9])
    with torch.no_grad():
        torch.testing.assert_close(lookup.compute_loss(student, dict(batch), num_items_in_batch=4),
                                   live.compute_loss(student, dict(batch), num_items_in_batch=4), rtol=1e-4, atol=1e-5)
    with pytest.raises(KDError, match="exactly one"):
        _trainer(parts, tmp_path / "none", student)


def test_a_trainer_run_updates_only_the_student_and_logs_the_components(parts, tmp_path):
    student = _student(parts)
    before = [p.detach().clone() for p in parts["teacher"].parameters()]
    trainer = _trainer(parts, tmp_path, student, teacher=parts["teacher"])
    start = [p.detach().clone() for p in student.parameters()]
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logged and {"distill_loss", "student_loss"} <= set(logged[0])
    assert all(torch.equal(a, b) for a, b in zip(before, parts["teacher"].parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(start, student.parameters(), strict=True))
