"""The loop: the teacher stays bit-identical, the student changes, cached logits equal live ones, runs repeat."""

import inspect

import pytest
import torch

from kd_helpers import DistillationLoss
from kd_helpers.data import load_splits, make_loader, subsample, tokenize
from kd_helpers.errors import NonFiniteLossError
from kd_helpers.models import freeze, load_classifier, load_tokenizer, make_student
from kd_helpers.train import (
    CachedTeacher,
    TrainingRun,
    distill,
    evaluate_model,
    get_teacher_logits,
    make_optimizer,
    optimizer_name,
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


def test_bf16_is_an_argument_and_only_for_the_student_forward(tiny, monkeypatch):
    """``bf16=True`` runs the student's training forward in bf16 (different last digits, finite losses); the
    environment is not read inside the loop (KD_CPU_BF16=1 alone changes nothing there)."""
    def first_epoch(**kwargs):
        student = make_student(tiny["base"], "base", seed=1)
        optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
        torch.manual_seed(0)
        return train_epoch(student, tiny["teacher"], _loader(tiny, shuffle=False), optimizer, None,
                           DistillationLoss(), CPU, progress=False, **kwargs)["steps"][0]["total_loss"]

    fp32 = first_epoch()
    monkeypatch.setenv("KD_CPU_BF16", "1")
    assert first_epoch() == fp32
    bf16 = first_epoch(bf16=True)
    assert bf16 != fp32 and abs(bf16 - fp32) < 0.05 * fp32


def test_one_precision_policy_cached_logits_equal_live_ones_under_bf16_training(tiny, monkeypatch):
    """Inference is fp32 everywhere: with bf16 training forced on the CPU, a cached-teacher run and a live-teacher
    run take identical steps, and a CUDA card without bf16 is never asked for it."""
    from kd_helpers import precision

    cached = CachedTeacher(predict_logits(tiny["teacher"], _loader(tiny, shuffle=False), CPU))
    with precision.train_autocast(CPU, True):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        for batch in _loader(tiny, shuffle=False):  # the teacher inside a bf16 region still answers in fp32
            torch.testing.assert_close(get_teacher_logits(tiny["teacher"], batch, CPU), cached(batch),
                                       rtol=0, atol=0)
    runs = []
    for teacher in (cached, tiny["teacher"]):
        student = make_student(tiny["base"], "base", seed=1)
        optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
        torch.manual_seed(0)
        runs.append(train_epoch(student, teacher, _loader(tiny, shuffle=False), optimizer, None,
                                DistillationLoss(), CPU, progress=False, bf16=True)["steps"])
    assert runs[0] == runs[1]
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert precision.resolve_bf16(torch.device("cuda")) is False
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert precision.resolve_bf16(torch.device("cuda")) is True
    assert precision.resolve_bf16(CPU, True) is True and precision.resolve_bf16(CPU, False) is False
    assert precision.resolve_bf16(torch.device("mps")) is False


def test_cpu_default_follows_the_bf16_instructions_and_the_teacher_recipe_stays_fp32(monkeypatch):
    """On a CPU, bf16 is the default exactly when the CPU has bf16 instructions; forcing works both ways; the
    teacher's fine-tuning is fp32 unless bf16 was asked for (prepare passes ``bool(config.bf16)``)."""
    from kd_helpers import experiment, precision

    for flag, expected in (("amx_bf16", True), ("avx512_bf16", True), (None, False)):
        monkeypatch.setattr(precision, "cpu_bf16_instructions", lambda flag=flag: flag)
        assert precision.resolve_bf16(CPU) is expected
        assert precision.resolve_bf16(CPU, False) is False and precision.resolve_bf16(CPU, True) is True
    assert "bf16=bool(config.bf16)" in inspect.getsource(experiment.prepare)


def test_students_get_the_fused_adamw_kernel_with_the_default_update_rule(tiny):
    """``make_optimizer``: PyTorch's fused AdamW on the CPU; its first steps match the multi-tensor kernel's."""
    runs = []
    for kernel in ("fused", "foreach"):
        student = make_student(tiny["base"], "base", seed=1)
        params = [p for p in student.parameters() if p.requires_grad]
        optimizer = make_optimizer(params, 1e-3) if kernel == "fused" else torch.optim.AdamW(params, lr=1e-3)
        assert bool(optimizer.defaults.get("fused")) is (kernel == "fused")
        torch.manual_seed(0)
        runs.append(train_epoch(student, tiny["teacher"], _loader(tiny, shuffle=False), optimizer, None,
                                DistillationLoss(), CPU, progress=False)["steps"])
    fused, foreach = ([step["total_loss"] for step in run] for run in runs)
    assert fused[0] == foreach[0] and fused != [0.0] * len(fused)
    assert all(abs(a - b) < 1e-4 * max(1.0, abs(b)) for a, b in zip(fused, foreach, strict=True))
    assert optimizer_name(CPU) == "adamw-fused" and optimizer_name(torch.device("mps")) == "adamw"


def test_ctrl_c_propagates_and_a_passed_run_keeps_finished_epochs(tiny, monkeypatch):
    """Ctrl-C is not swallowed by the loop (it is caught once, where results are saved)."""
    import kd_helpers.train as train

    calls = {"n": 0}
    real = train.evaluate_model

    def evaluate_then_interrupt(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "evaluate_model", evaluate_then_interrupt)
    run = TrainingRun()
    student = make_student(tiny["base"], "base", seed=1)
    with pytest.raises(KeyboardInterrupt):
        distill(student, tiny["teacher"], _loader(tiny), _loader(tiny, shuffle=False), CPU, epochs=3,
                verbose=False, progress=False, run=run)
    assert [r["epoch"] for r in run.history] == [1]
    model = make_student(tiny["base"], "base", seed=1)
    monkeypatch.setattr(train.torch.optim.AdamW, "step", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        train.fine_tune(model, _loader(tiny), CPU, epochs=1, progress=False)


def test_teacher_ensemble_answers_with_the_mean_of_its_members_logits(tiny):
    """A TeacherEnsemble goes wherever a teacher goes (model_inputs, predict_logits, evaluate_model)."""
    from kd_helpers.teacher import TeacherEnsemble

    members = [freeze(make_student(tiny["base"], "base", seed=s)) for s in (1, 2)]
    ensemble = TeacherEnsemble(members).eval()
    loader = _loader(tiny, shuffle=False)
    each = [predict_logits(m, loader, CPU) for m in members]
    torch.testing.assert_close(predict_logits(ensemble, loader, CPU), (each[0] + each[1]) / 2)
    assert 0.0 <= evaluate_model(ensemble, loader, CPU) <= 1.0
    assert ensemble.config.num_labels == members[0].config.num_labels
