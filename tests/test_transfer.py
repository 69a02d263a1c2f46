"""The transfer-set regime: augmentation, the tiny student, mixed batches, the loss, and labels never read."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import functional as F

from kd_helpers import experiment, stats, transfer
from kd_helpers.augment import MASK, augment, normalise
from kd_helpers.config import KDConfig
from kd_helpers.data import ChunkedLengthSampler
from kd_helpers.loss import UNLABELLED, DistillationLoss, transfer_loss
from kd_helpers.models import count_parameters, load_classifier, make_student, make_tiny_student

TEXTS = ["a warm and funny film that never drags", "the plot makes no sense at all",
         "great music", "i walked out after twenty minutes of this mess"]


def test_augmentation_is_deterministic_and_seeded():
    a, b = augment(TEXTS, 5, seed=3), augment(TEXTS, 5, seed=3)
    assert a["text"] == b["text"] and a["source"] == b["source"]
    assert augment(TEXTS, 5, seed=4)["text"] != a["text"]
    assert all(a["source"].count(i) <= 5 for i in range(len(TEXTS)))
    assert any(MASK in t for t in a["text"])


def test_augmentation_never_leaks_a_held_out_sentence():
    """A variant equal (after normalisation) to a validation/test sentence is rejected."""
    held_out = ["A warm and funny film that never drags!", "great", "music", "the plot makes no sense"]
    variants = augment(TEXTS, 20, seed=0, exclude=held_out)
    keys = {normalise(t) for t in variants["text"]}
    assert not keys & {normalise(t) for t in held_out + TEXTS}
    assert len(keys) == len(variants)  # no duplicates either
    # without the exclusion the same draw does produce some of them: the check above is not vacuous
    unguarded = {normalise(t) for t in augment(TEXTS, 20, seed=0)["text"]}
    assert unguarded & {normalise(t) for t in held_out[1:]}


def test_transfer_loss_weights_labelled_and_transfer_rows():
    torch.manual_seed(0)
    s, t = torch.randn(6, 2), torch.randn(6, 2)
    criterion = DistillationLoss(temperature=2.0, alpha=0.3)
    labels = torch.tensor([0, 1, UNLABELLED, 1, UNLABELLED, UNLABELLED])
    total, distill, student = transfer_loss(criterion, s, t, labels)
    known = labels != UNLABELLED
    kl = F.kl_div(F.log_softmax(s / 2, -1), F.softmax(t / 2, -1), reduction="none").sum(-1) * 4
    ce = F.cross_entropy(s[known], labels[known])
    assert distill.item() == pytest.approx(kl.mean().item(), rel=1e-5)
    assert student.item() == pytest.approx(ce.item(), rel=1e-5)
    by_hand = (0.3 * kl[known].sum() + 0.7 * ce * known.sum() + kl[~known].sum()) / 6
    assert total.item() == pytest.approx(by_hand.item(), rel=1e-5)
    every = torch.tensor([0, 1, 0, 1, 1, 0])  # no transfer rows: exactly the criterion
    assert all(torch.equal(x, y) for x, y in zip(transfer_loss(criterion, s, t, every), criterion(s, t, every),
                                                 strict=True))


def test_mixed_batches_have_the_stated_composition_and_count():
    first, second = list(range(10)), list(range(10, 50))
    lengths = list(range(50))
    batches = transfer.mixed_batches(first, second, lengths, batch_size=8, steps=13, second_share=0.5, seed=1)
    assert len(batches) == 13
    assert all(sum(i < 10 for i in b) == 4 and sum(i >= 10 for i in b) == 4 for b in batches)
    assert batches == transfer.mixed_batches(first, second, lengths, 8, 13, 0.5, seed=1)
    only_first = transfer.mixed_batches(first, [], lengths, 8, 5, 0.5, seed=1)
    assert all(len(b) == 8 and max(b) < 10 for b in only_first)


def test_chunked_length_sampler_covers_every_row_and_pads_less():
    torch.manual_seed(0)
    lengths = torch.randint(3, 60, (640,)).tolist()
    grouped = ChunkedLengthSampler(lengths, 32, chunk_batches=8, seed=1)
    plain = ChunkedLengthSampler(lengths, 32, chunk_batches=1, seed=1)
    epoch1, epoch2 = list(grouped), list(grouped)
    assert sorted(i for b in epoch1 for i in b) == list(range(640)) and epoch1 != epoch2

    def padded(batches):
        return sum(max(lengths[i] for i in b) * len(b) for b in batches)

    assert padded(epoch1) < 0.8 * padded(list(plain))
    # batches are shuffled: long and short ones alternate, no global long-to-short curriculum
    maxima = [max(lengths[i] for i in b) for b in epoch1]
    assert maxima != sorted(maxima) and maxima != sorted(maxima, reverse=True)


def test_tiny_student_is_small_and_copies_the_base(minilm_path):
    base = load_classifier(minilm_path)
    tiny = make_student(base, "tiny", seed=1)
    assert count_parameters(tiny) <= count_parameters(base) / 5
    layer = tiny.albert.encoder.albert_layer_groups[0].albert_layers[0]
    assert torch.equal(layer.attention.query.weight, base.bert.encoder.layer[0].attention.self.query.weight)
    assert torch.equal(layer.ffn.weight, base.bert.encoder.layer[0].intermediate.dense.weight)
    random_init = make_tiny_student(base, seed=1, init="random")
    assert not torch.equal(random_init.albert.encoder.albert_layer_groups[0].albert_layers[0].ffn.weight,
                           layer.ffn.weight)
    again = make_student(base, "tiny", seed=1)
    assert all(torch.equal(p, q) for p, q in zip(tiny.parameters(), again.parameters(), strict=True))
    out = tiny(input_ids=torch.tensor([[101, 2307, 102]])).logits
    assert out.shape == (1, 2)


@pytest.fixture(scope="module")
def fast_setup():
    return experiment.prepare(KDConfig(student="tiny", fast=True), log=lambda *_: None, progress=False)


def _kd_run(setup, steps=12):
    ts = transfer.prepare_transfer(setup, n_variants=2, fraction=0.5, log=lambda *_: None)
    student, run = transfer.train_method(ts, "kd", seed=1, steps=steps, evals=2)
    predicted, _ = transfer.predictions(student, ts.test_loader, setup.device)
    return ts, run, predicted


@pytest.mark.slow
def test_transfer_rows_never_read_a_label(fast_setup):
    """Poison every hidden label: the KD student trains to the same losses and predictions, to the bit."""
    ts, run, predicted = _kd_run(fast_setup)
    hidden = [i for i in range(len(fast_setup.splits["train"])) if i not in set(ts.labelled_ids)]
    assert hidden and len(ts.transfer_ids) > len(hidden)  # hidden training rows and their variants
    poisoned = copy.copy(fast_setup)
    labels = list(fast_setup.splits["train"]["label"])
    for i in hidden:
        labels[i] = 1 - labels[i]
    poisoned.splits = {**fast_setup.splits, "train": fast_setup.splits["train"].remove_columns("label")
                       .add_column("label", labels)}
    ts2, run2, predicted2 = _kd_run(poisoned)
    assert ts2.transfer_ids == ts.transfer_ids and run2.steps == run.steps and torch.equal(predicted2, predicted)
    # the control: flipping *known* labels does change training, so the comparison above can fail
    for i in ts.labelled_ids:
        labels[i] = 1 - labels[i]
    poisoned.splits = {**fast_setup.splits, "train": fast_setup.splits["train"].remove_columns("label")
                       .add_column("label", labels)}
    _, run3, _ = _kd_run(poisoned)
    assert run3.steps != run.steps


@pytest.mark.slow
def test_methods_share_steps_and_initial_weights(fast_setup):
    ts = transfer.prepare_transfer(fast_setup, n_variants=2, fraction=0.5, log=lambda *_: None)
    runs = {m: transfer.train_method(ts, m, seed=2, steps=10, evals=5)[1] for m in transfer.METHODS}
    assert {len(r.steps) for r in runs.values()} == {10}
    assert {tuple(h["step"] for h in r.history) for r in runs.values()} == {(2, 4, 6, 8, 10)}
    first = experiment.new_student(fast_setup, kind="tiny", seed=2)
    second = experiment.new_student(fast_setup, kind="tiny", seed=2)
    assert all(torch.equal(p, q) for p, q in zip(first.parameters(), second.parameters(), strict=True))
    assert runs["ce"].steps[0]["distill_loss"] > 0 and runs["aug_ce"].steps[0]["student_loss"] > 0


@pytest.mark.slow
def test_student_cache_reloads_the_same_student_and_retrains_when_an_input_changes(fast_setup, tmp_path,
                                                                                  monkeypatch):
    monkeypatch.setenv("KD_CACHE_DIR", str(tmp_path))
    ts = transfer.prepare_transfer(fast_setup, n_variants=2, fraction=0.5, log=lambda *_: None)
    student, run = transfer.train_method(ts, "kd", seed=3, steps=6, evals=2, cache=True)
    entries = list((tmp_path / "students").glob("kd-*.safetensors"))
    assert not run.cached and len(entries) == 1

    def no_training(*args, **kwargs):
        raise AssertionError("trained although the student was cached")

    with monkeypatch.context() as patch:
        patch.setattr(transfer, "train_epoch", no_training)
        again, run2 = transfer.train_method(ts, "kd", seed=3, steps=6, evals=2, cache=True)
    assert run2.cached and run2.history == run.history and run2.steps == run.steps
    assert all(torch.equal(a, b) for a, b in zip(student.state_dict().values(), again.state_dict().values(),
                                                  strict=True))
    # any input that decides training gives a new entry: alpha, kd_helpers' code, or the labels
    assert not transfer.train_method(ts, "kd", seed=3, steps=6, evals=2, alpha=0.5, cache=True)[1].cached
    with monkeypatch.context() as patch:
        patch.setattr(transfer, "_code_fingerprint", lambda: "edited")
        assert not transfer.train_method(ts, "kd", seed=3, steps=6, evals=2, cache=True)[1].cached
    ts.labels["kd"] = ts.labels["kd"].clone()
    ts.labels["kd"][ts.labelled_ids[0]] = 1 - ts.labels["kd"][ts.labelled_ids[0]]
    assert not transfer.train_method(ts, "kd", seed=3, steps=6, evals=2, cache=True)[1].cached
    # a corrupt entry is retrained and rewritten, never read
    entries[0].write_bytes(entries[0].read_bytes()[:-10])
    ts.labels["kd"][ts.labelled_ids[0]] = 1 - ts.labels["kd"][ts.labelled_ids[0]]
    _, run3 = transfer.train_method(ts, "kd", seed=3, steps=6, evals=2, cache=True)
    assert not run3.cached and run3.steps == run.steps
    assert transfer.train_method(ts, "kd", seed=3, steps=6, evals=2, cache=True)[1].cached


@pytest.mark.slow
def test_the_comparison_trains_in_fp32_unless_bf16_is_forced(fast_setup, tmp_path, monkeypatch):
    """``compare_bf16``: fp32 by default, KD_CPU_BF16 forces either; the choice reaches the training loop and the
    student cache (a bf16 student is never loaded for an fp32 request)."""
    assert transfer.compare_bf16(KDConfig(bf16=None)) is False
    assert transfer.compare_bf16(KDConfig(bf16=True)) is True and transfer.compare_bf16(KDConfig(bf16=False)) is False
    monkeypatch.setenv("KD_CACHE_DIR", str(tmp_path))
    seen = []
    real = transfer.train_epoch

    def spy(*args, **kwargs):
        seen.append(kwargs["bf16"])
        return real(*args, **kwargs)

    monkeypatch.setattr(transfer, "train_epoch", spy)
    for bf16 in (False, True):
        ts = transfer.prepare_transfer(fast_setup, n_variants=2, fraction=0.5, bf16=bf16, log=lambda *_: None)
        assert ts.bf16 is bf16
        assert not transfer.train_method(ts, "ce", seed=4, steps=4, evals=1, cache=True)[1].cached
    assert seen == [False, True]
    default = transfer.prepare_transfer(fast_setup, n_variants=2, fraction=0.5, log=lambda *_: None)
    assert default.bf16 is fast_setup.bf16


def test_paired_tests_match_the_stats_helpers():
    a = [torch.tensor([True, True, True, False, True, True]), torch.tensor([True, False, True, True, True, True])]
    b = [torch.tensor([False, True, False, False, True, False]), torch.tensor([True, False, False, True, True, False])]
    out = transfer.paired_tests(a, b)
    assert out["difference_mean"] == pytest.approx((10 - 5) / 12)
    assert out["mcnemar_per_seed"][0] == stats.mcnemar(a[0].numpy(), b[0].numpy())
    assert out["mcnemar_pooled"] == stats.pooled_mcnemar([(x.numpy(), y.numpy()) for x, y in zip(a, b, strict=True)])
    # pooled: 5 rows only a got right, none only b -> exact two-sided p = 2 * 0.5 ** 5
    assert out["mcnemar_pooled"]["p_value"] == pytest.approx(2 * 0.5 ** 5)
    assert out["bootstrap"]["low"] <= out["difference_mean"] <= out["bootstrap"]["high"]


@pytest.mark.slow
def test_compare_command_reports_the_teachers_share(tmp_path, capsys):
    from kd_helpers import cli
    from kd_helpers.cache import read_json_checked

    code = cli.main(["compare", "--fast", "--seeds", "1", "2", "--steps", "4", "--variants", "2",
                     "--output-dir", str(tmp_path)])
    assert code == 0
    regime = read_json_checked(tmp_path / "compare.json")["regimes"][0]
    assert regime["n_variants"] == 2 and set(regime["tests"]) == {"kd", "aug_ce"}
    share = regime["teacher_share"]
    kd, aug = regime["methods"]["kd"]["test_accuracy"], regime["methods"]["aug_ce"]["test_accuracy"]
    assert share["difference_mean"] == pytest.approx(sum(kd) / 2 - sum(aug) / 2)
    assert len(share["mcnemar_per_seed"]) == 2 and 0 <= share["mcnemar_pooled"]["p_value"] <= 1
    assert "The teacher's share (KD vs CE on augmented rows" in capsys.readouterr().out
