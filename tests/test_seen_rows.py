"""seen_rows_only: training only the used word-embedding rows learns exactly what training the full table does."""

import pytest
import torch
from torch import nn
from transformers import get_linear_schedule_with_warmup

from kd_helpers import DistillationLoss
from kd_helpers.data import load_splits, make_loader, subsample, tokenize
from kd_helpers.errors import KDError
from kd_helpers.models import freeze, load_classifier, load_tokenizer, make_student
from kd_helpers.seen_rows import SeenRowsEmbedding, seen_rows_only, used_token_ids
from kd_helpers.train import distill, make_optimizer, predict_logits, train_epoch

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny(tiny_bert_dir):
    tokenizer = load_tokenizer(tiny_bert_dir)
    splits = load_splits("reviews")
    return {"tokenizer": tokenizer,
            "train": tokenize(subsample(splits["train"], 64, 0), tokenizer, 32),
            "val": tokenize(subsample(splits["validation"], 48, 0), tokenizer, 32),
            "teacher": freeze(load_classifier(tiny_bert_dir)), "base": load_classifier(tiny_bert_dir)}


def _train(student, tiny, loader, epochs=2, swap=True):
    """``epochs`` epochs of the default recipe (fused AdamW, warm-up, weight decay 0.01), big lr to move far."""
    torch.manual_seed(0)  # the same dropout masks for both students
    with (seen_rows_only(student, loader) if swap else _nothing()) as rows:
        optimizer = make_optimizer([p for p in student.parameters() if p.requires_grad], 5e-3)
        if rows is not None:
            rows.follow(optimizer)
        scheduler = get_linear_schedule_with_warmup(optimizer, 2, epochs * len(loader))
        for _ in range(epochs):
            train_epoch(student, tiny["teacher"], loader, optimizer, scheduler, DistillationLoss(), CPU,
                        progress=False)
        return rows


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def test_seen_rows_only_is_the_full_update(tiny):
    def loader():  # a fresh one each: a loader draws a new order per epoch
        return make_loader(tiny["train"], tiny["tokenizer"], batch_size=16, shuffle=True, seed=0)

    full, swapped = make_student(tiny["base"], "base", seed=1), make_student(tiny["base"], "base", seed=1)
    before = full.get_input_embeddings().weight.detach().clone()
    _train(full, tiny, loader(), swap=False)
    rows = _train(swapped, tiny, loader())
    assert isinstance(rows, SeenRowsEmbedding) and 10 < len(rows.ids) < before.shape[0] // 2
    assert type(swapped.get_input_embeddings()) is nn.Embedding  # put back
    assert swapped.get_input_embeddings().weight.requires_grad
    ours, theirs = swapped.state_dict(), full.state_dict()
    assert ours.keys() == theirs.keys()
    name = "bert.embeddings.word_embeddings.weight"
    for key, value in theirs.items():  # bit for bit: every weight the training rows reach
        assert key == name or torch.equal(ours[key], value), key
    table = theirs[name]
    unseen = torch.ones(len(table), dtype=torch.bool)
    unseen[rows.ids] = False
    assert torch.equal(ours[name][rows.ids], table[rows.ids])
    # the other rows: AdamW's per-step decay against one product of the same factors, equal up to rounding
    torch.testing.assert_close(ours[name][unseen], table[unseen], rtol=1e-6, atol=1e-7)
    assert not torch.equal(table[unseen], before[unseen])  # the unseen rows did move (weight decay), in both
    assert (table[rows.ids] - before[rows.ids]).abs().max() > 100 * (table[unseen] - before[unseen]).abs().max()


def test_evaluation_inside_equals_after(tiny):
    loader = make_loader(tiny["train"], tiny["tokenizer"], batch_size=16, shuffle=True, seed=0)
    val = make_loader(tiny["val"], tiny["tokenizer"], batch_size=16)
    student = make_student(tiny["base"], "base", seed=2)
    with seen_rows_only(student, loader) as rows:
        optimizer = make_optimizer([p for p in student.parameters() if p.requires_grad], 5e-3)
        rows.follow(optimizer)
        train_epoch(student, tiny["teacher"], loader, optimizer, None, DistillationLoss(), CPU, progress=False)
        assert (rows.local[torch.tensor(sum(tiny["val"]["input_ids"], []))] < 0).any()  # validation has new tokens
        inside = predict_logits(student, val, CPU)
        trainable = sum(p.numel() for p in student.parameters() if p.requires_grad)
    after = predict_logits(student, val, CPU)
    torch.testing.assert_close(inside, after, rtol=0, atol=0)
    table = student.get_input_embeddings().weight
    assert trainable == sum(p.numel() for p in student.parameters()) - table.numel() + len(rows.ids) * table.shape[1]


def test_a_token_outside_the_training_rows_is_a_clear_error_and_the_table_is_put_back(tiny):
    loader = make_loader(tiny["train"], tiny["tokenizer"], batch_size=16, shuffle=True, seed=0)
    student = make_student(tiny["base"], "base", seed=3)
    table = student.get_input_embeddings()
    unused = next(t for t in range(1000, table.num_embeddings) if t not in set(used_token_ids(loader).tolist()))
    with pytest.raises(KDError, match=f"token id {unused} is not among the training rows' tokens"):
        with seen_rows_only(student, loader):
            student.train()
            student(input_ids=torch.tensor([[101, unused, 102]]))
    assert student.get_input_embeddings() is table and table.weight.requires_grad


def test_without_token_ids_or_with_a_frozen_table_nothing_is_swapped(tiny):
    student = make_student(tiny["base"], "base", seed=4)
    with seen_rows_only(student, [{"input_ids": torch.tensor([[101, 102]])}]) as rows:
        assert rows is None
    student.get_input_embeddings().weight.requires_grad_(False)
    with seen_rows_only(student, make_loader(tiny["train"], tiny["tokenizer"], 16, shuffle=True)) as rows:
        assert rows is None


def test_seen_rows_needs_adamw(tiny):
    loader = make_loader(tiny["train"], tiny["tokenizer"], batch_size=16, shuffle=True, seed=0)
    student = make_student(tiny["base"], "base", seed=5)
    with seen_rows_only(student, loader) as rows, pytest.raises(KDError, match="needs AdamW.*SGD"):
        rows.follow(torch.optim.SGD(student.parameters(), lr=0.1, weight_decay=0.01))


def test_distill_trains_only_seen_rows_and_restores_the_table(tiny, monkeypatch):
    import kd_helpers.train as train

    seen = []
    real = train.seen_rows_only

    def spy(model, loader):
        seen.append(loader)
        return real(model, loader)

    monkeypatch.setattr(train, "seen_rows_only", spy)
    loader = make_loader(tiny["train"], tiny["tokenizer"], batch_size=16, shuffle=True, seed=0)
    student = make_student(tiny["base"], "base", seed=6)
    distill(student, tiny["teacher"], loader, make_loader(tiny["val"], tiny["tokenizer"], 16), CPU, epochs=1,
            verbose=False, progress=False)
    assert seen == [loader] and type(student.get_input_embeddings()) is nn.Embedding


def test_a_model_without_a_word_table_trains_as_usual(tiny):
    loader = make_loader(tiny["train"], tiny["tokenizer"], batch_size=16, shuffle=True, seed=0)
    with seen_rows_only(nn.Linear(2, 2), loader) as rows:
        assert rows is None
