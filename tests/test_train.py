"""The loop: the teacher stays bit-identical, the student changes, cached logits equal live ones, runs repeat."""

import pytest
import torch

from kd_helpers import DistillationLoss
from kd_helpers.data import load_splits, make_loader, subsample, tokenize
from kd_helpers.errors import NonFiniteLossError
from kd_helpers.models import freeze, load_classifier, load_tokenizer, make_student
from kd_helpers.train import (
    CachedTeacher,
    autocast,
    cpu_bf16_requested,
    distill,
    evaluate_model,
    get_teacher_logits,
    predict_logits,
    train_epoch,
)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny(tiny_bert_dir):
    tokenizer = load_tokenizer(tiny_bert_dir)
    splits = load_splits("reviews")
    train = tokenize(subsample(splits["train"], 96, 0), tokenizer, 32)
    val = tokenize(subsample(splits["validation"], 48, 0), tokenizer, 32)
    teacher = freeze(load_classifier(tiny_bert_dir))
    base = load_classifier(tiny_bert_dir)
    return {"tokenizer": tokenizer, "train": train, "val": val, "teacher": teacher, "base": base}


def _loader(tiny, seed=0, shuffle=True):
    return make_loader(tiny["train"], tiny["tokenizer"], batch_size=16, shuffle=shuffle, seed=seed)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_teacher_frozen_student_changes(tiny):
    teacher_before = _state(tiny["teacher"])
    student = make_student(tiny["base"], "base", seed=1)
    student_before = _state(student)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    result = train_epoch(student, tiny["teacher"], _loader(tiny), optimizer, None, DistillationLoss(), CPU,
                         progress=False)
    assert set(result) >= {"total_loss", "distill_loss", "student_loss", "steps"}
    assert len(result["steps"]) == 6
    assert all(torch.equal(teacher_before[k], v) for k, v in tiny["teacher"].state_dict().items())
    assert not tiny["teacher"].training
    changed = [k for k, v in student.state_dict().items() if not torch.equal(student_before[k], v)]
    assert len(changed) > 10


def test_cached_and_live_teacher_give_the_same_losses(tiny):
    loader = _loader(tiny, shuffle=False)
    cached = CachedTeacher(predict_logits(tiny["teacher"], loader, CPU))
    batch = next(iter(_loader(tiny, seed=3)))
    live = get_teacher_logits(tiny["teacher"], batch, CPU)
    looked_up = get_teacher_logits(cached, batch, CPU)
    torch.testing.assert_close(live, looked_up, atol=1e-5, rtol=1e-5)
    student_logits = torch.randn(len(batch["labels"]), 2, generator=torch.Generator().manual_seed(0))
    criterion = DistillationLoss(4.0, 0.7)
    for a, b in zip(criterion(student_logits, live, batch["labels"]),
                    criterion(student_logits, looked_up, batch["labels"]), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_same_seed_same_history(tiny):
    histories = []
    for _ in range(2):
        torch.manual_seed(0)
        student = make_student(tiny["base"], "compact", seed=7)
        run = distill(student, tiny["teacher"], _loader(tiny, seed=5), make_loader(tiny["val"], tiny["tokenizer"]),
                      CPU, epochs=2, lr=1e-3, verbose=False, progress=False)
        histories.append((run.history, run.steps))
    assert histories[0] == histories[1]


def test_distill_prints_the_reference_lines(tiny, capsys):
    student = make_student(tiny["base"], "base", seed=2)
    run = distill(student, tiny["teacher"], _loader(tiny), make_loader(tiny["val"], tiny["tokenizer"]), CPU,
                  epochs=1, lr=1e-3, progress=False)
    out = capsys.readouterr().out
    for line in ("Epoch 1/1", "Loss: ", "  - Distillation Loss: ", "  - Student Loss: ", "Validation Accuracy: "):
        assert line in out
    assert set(run.history[0]) == {"epoch", "loss", "distill_loss", "student_loss", "accuracy"}
    assert run.history[0]["accuracy"] == evaluate_model(student, make_loader(tiny["val"], tiny["tokenizer"]), CPU)


def test_non_finite_loss_stops_with_the_step(tiny):
    student = make_student(tiny["base"], "base", seed=2)
    poisoned = CachedTeacher(torch.full((len(tiny["train"]), 2), float("nan")))
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    with pytest.raises(NonFiniteLossError, match="step 1"):
        train_epoch(student, poisoned, _loader(tiny), optimizer, None, DistillationLoss(), CPU, progress=False)


def test_compact_student_keeps_two_layers(tiny_distilbert_dir, minilm_path):
    base = load_classifier(minilm_path)
    compact = make_student(base, "compact")
    assert len(compact.base_model.encoder.layer) == 2 and compact.config.num_hidden_layers == 2
    torch.testing.assert_close(compact.base_model.encoder.layer[1].output.dense.weight,
                               base.base_model.encoder.layer[3].output.dense.weight)
    distil = make_student(load_classifier(tiny_distilbert_dir), "compact")
    assert distil.config.n_layers == 2


def test_cpu_bf16_is_opt_in_and_only_for_the_student_forward(tiny, monkeypatch):
    """KD_CPU_BF16=1 runs the student's training forward in bf16 (different last digits, finite losses)."""
    def first_epoch():
        student = make_student(tiny["base"], "base", seed=1)
        optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
        torch.manual_seed(0)
        return train_epoch(student, tiny["teacher"], _loader(tiny, shuffle=False), optimizer, None,
                           DistillationLoss(), CPU, progress=False)["steps"][0]["total_loss"]

    monkeypatch.delenv("KD_CPU_BF16", raising=False)
    with autocast(CPU, cpu_bf16=cpu_bf16_requested()):
        assert not torch.is_autocast_enabled("cpu")
    fp32 = first_epoch()
    monkeypatch.setenv("KD_CPU_BF16", "1")
    with autocast(CPU, cpu_bf16=cpu_bf16_requested()):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    bf16 = first_epoch()
    assert bf16 != fp32 and abs(bf16 - fp32) < 0.05 * fp32
