"""Beyond logits: each feature loss against its formula by hand, the projection, the frozen teacher, the cache."""

from __future__ import annotations

import json

import pytest
import torch
from torch.nn import functional as F

from kd_helpers import beyond, experiment
from kd_helpers.config import KDConfig
from kd_helpers.errors import KDError
from kd_helpers.features import (
    FeatureWeights,
    HiddenProjection,
    attention_kl_loss,
    cosine_hidden_loss,
    hidden_mse_loss,
    layer_map,
    live_teacher_features,
)
from kd_helpers.models import parameter_checksum, state_dict_sha256


def _states(seed=0, batch=2, tokens=4, width=3):
    g = torch.Generator().manual_seed(seed)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])[:batch, :tokens]
    return torch.randn(batch, tokens, width, generator=g), torch.randn(batch, tokens, width, generator=g), mask


def test_cosine_loss_is_one_minus_cosine_over_real_tokens():
    s, t, mask = _states()
    by_hand = []
    for b in range(2):
        for k in range(4):
            if mask[b, k]:
                by_hand.append(1 - float(s[b, k] @ t[b, k]) / float(s[b, k].norm() * t[b, k].norm()))
    assert cosine_hidden_loss(s, t, mask).item() == pytest.approx(sum(by_hand) / len(by_hand), rel=1e-5)
    assert cosine_hidden_loss(t, t, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert cosine_hidden_loss(2.5 * t, t, mask).item() == pytest.approx(0.0, abs=1e-6)  # direction, not length


def test_mse_loss_through_the_projection_by_hand():
    g = torch.Generator().manual_seed(1)
    s, mask = torch.randn(2, 4, 3, generator=g), torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    t = torch.randn(2, 4, 5, generator=g)
    w, b = torch.randn(5, 3, generator=g), torch.randn(5, generator=g)
    squares = [((w @ s[i, k] + b - t[i, k]) ** 2).tolist() for i in range(2) for k in range(4) if mask[i, k]]
    by_hand = sum(sum(row) for row in squares) / (len(squares) * 5)
    ours = hidden_mse_loss(s, t, mask, lambda x: x @ w.T + b)
    assert ours.item() == pytest.approx(by_hand, rel=1e-5)


def test_attention_kl_by_hand_ignores_padded_queries():
    g = torch.Generator().manual_seed(2)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    key_mask = mask[:, None, None, :].bool()
    s = torch.randn(2, 2, 3, 3, generator=g).masked_fill(~key_mask, -1e9).softmax(-1)
    t = torch.randn(2, 2, 3, 3, generator=g).masked_fill(~key_mask, -1e9).softmax(-1)
    terms = []
    for b in range(2):
        for h in range(2):
            for q in range(3):
                if mask[b, q]:
                    terms.append(sum(float(t[b, h, q, k] * torch.log(t[b, h, q, k] / s[b, h, q, k]))
                                     for k in range(3) if mask[b, k]))
    assert attention_kl_loss(s, t, mask).item() == pytest.approx(sum(terms) / len(terms), rel=1e-4)
    assert attention_kl_loss(t, t, mask).item() == pytest.approx(0.0, abs=1e-6)
    # the same number as PyTorch's KL on the real query rows
    rows = mask[:, None, :].expand(2, 2, 3).bool()
    reference = F.kl_div(torch.log(s[rows].clamp_min(1e-30)), t[rows], reduction="sum") / rows.sum()
    assert attention_kl_loss(s, t, mask).item() == pytest.approx(reference.item(), rel=1e-4)


@pytest.mark.parametrize("call", [
    lambda: cosine_hidden_loss(torch.zeros(2, 4, 3), torch.zeros(2, 4, 5), torch.ones(2, 4)),
    lambda: hidden_mse_loss(torch.zeros(2, 4, 3), torch.zeros(2, 4, 5), torch.ones(2, 4)),
    lambda: attention_kl_loss(torch.zeros(2, 12, 4, 4), torch.zeros(2, 6, 4, 4), torch.ones(2, 4)),
])
def test_shape_mismatches_name_both_shapes_in_one_line(call):
    with pytest.raises(KDError) as error:
        call()
    message = str(error.value)
    assert "\n" not in message and "student shape" in message and "teacher shape" in message
    assert any(s in message for s in ("(2, 4, 3)", "(2, 12, 4, 4)"))


def test_layer_map_is_uniform_data():
    assert layer_map(1, 6) == [(0, 0), (1, 6)]
    assert layer_map(2, 6) == [(0, 0), (1, 3), (2, 6)]
    assert layer_map(6, 6) == [(0, 0)] + [(i, i) for i in range(1, 7)]
    with pytest.raises(KDError, match="layer map"):
        layer_map(7, 6)


def test_feature_weights_are_checked_and_named():
    assert FeatureWeights().name() == "logit"
    assert FeatureWeights(hidden=1, attention=1).name() == "logit+hidden+attention"
    assert FeatureWeights(hidden=0.5).name() == "logit+hiddenx0.5"
    with pytest.raises(KDError, match="attention=-1"):
        FeatureWeights(attention=-1)


def test_projection_starts_as_the_identity_when_widths_match():
    x = torch.randn(2, 3, 4)
    assert torch.equal(HiddenProjection(4, 4, pairs=2)(x, 1), x)
    assert HiddenProjection(4, 6, pairs=1)(x, 0).shape == (2, 3, 6)


@pytest.fixture(scope="module")
def feature_setup():
    setup = experiment.prepare(KDConfig(student="tiny", fast=True), log=lambda *_: None, progress=False)
    return beyond.prepare_features(setup, log=lambda *_: None)


@pytest.mark.slow
def test_cached_teacher_states_equal_a_live_teacher(feature_setup):
    fs = feature_setup
    batch = next(iter(fs.setup.train_loader(seed=1)))
    live_h, live_a = live_teacher_features(fs.setup.teacher, batch, fs.pairs, fs.setup.device)
    cached_h, cached_a = fs.features(batch["idx"], batch["input_ids"].shape[1])
    mask = batch["attention_mask"].bool()
    for a, b in zip(live_h, cached_h, strict=True):
        assert torch.allclose(a[mask], b[mask], atol=2e-2, rtol=1e-3)  # stored in fp16
    for a, b in zip(live_a, cached_a, strict=True):  # the real query rows (the losses never read padded ones)
        for j, n in enumerate(mask.sum(1).tolist()):
            assert torch.allclose(a[j, :, :n], b[j, :, :n], atol=1e-3)
    again = beyond.prepare_features(fs.setup, log=lambda *_: None)  # from the disk cache
    assert all(torch.equal(x, y) for x, y in zip(again.features.hidden, fs.features.hidden, strict=True))


@pytest.mark.slow
def test_only_student_and_projection_learn_and_the_teacher_stays_bit_identical(feature_setup, monkeypatch):
    fs = feature_setup
    teacher_before = state_dict_sha256(fs.setup.teacher)
    made = {}
    original = beyond.HiddenProjection

    def spy(*args, **kwargs):
        made["projection"] = original(*args, **kwargs)
        made["before"] = [p.detach().clone() for p in made["projection"].parameters()]
        return made["projection"]

    monkeypatch.setattr(beyond, "HiddenProjection", spy)
    student, history, steps = beyond.train_run(fs, 0.7, FeatureWeights(hidden=1.0, attention=1.0), seed=1,
                                               steps=6, evals=2)
    assert state_dict_sha256(fs.setup.teacher) == teacher_before
    assert all(p.grad is None for p in fs.setup.teacher.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(made["before"], made["projection"].parameters(), strict=True))
    assert all(p.grad is not None for p in made["projection"].parameters())
    fresh = experiment.new_student(fs.setup, kind="tiny", seed=1)
    assert parameter_checksum(student) != parameter_checksum(fresh)
    assert len(history) == 2 and history[-1]["step"] == 6
    assert all(s["hidden_loss"] > 0 and s["attention_loss"] > 0 for s in steps)


@pytest.mark.slow
def test_results_file_resumes_and_summarises(feature_setup, tmp_path):
    fs = feature_setup
    path = tmp_path / "features.json"
    methods = {k: beyond.METHODS[k] for k in ("ce", "logit")}
    results = beyond.open_results(fs, path, steps=4, evals=2, log=lambda *_: None)
    beyond.run_comparison(fs, results, methods, seeds=(1, 2), log=lambda *_: None)
    stored = json.loads(path.read_text())
    assert set(stored["runs"]) == {"ce", "logit"} and set(stored["runs"]["logit"]["per_seed"]) == {"1", "2"}
    trained = []
    resumed = beyond.open_results(fs, path, steps=4, evals=2, log=lambda *_: None)
    beyond.run_comparison(fs, resumed, methods, seeds=(1, 2), log=trained.append)
    assert trained == []  # nothing left to train
    rows = {row["method"]: row for row in beyond.summary(resumed)}
    ce = [resumed["runs"]["ce"]["per_seed"][s]["test_accuracy"] for s in ("1", "2")]
    assert rows["ce"]["mean"] == pytest.approx(sum(ce) / 2) and rows["ce"]["n"] == 2
    assert 0 <= rows["logit"]["vs_ce"]["p_value"] <= 1
    assert "| logit |" in beyond.format_summary(resumed)


@pytest.mark.parametrize(("args", "message"), [
    (["--feature-loss", "hidden,colour"], "--feature-loss 'hidden,colour'"),
    (["--feature-loss", "hidden", "--feature-weight", "1,2"], "2 weight(s) for 1 loss(es)"),
    (["--feature-loss", "hidden", "--feature-weight", "heavy"], "--feature-weight 'heavy'"),
    (["--feature-weight", "1"], "--feature-weight needs --feature-loss"),
    (["--feature-loss", "attention", "--feature-weight", "-1"], "attention=-1.0"),
])
def test_features_cli_rejects_bad_options_in_one_line(args, message, capsys):
    from kd_helpers import cli

    assert cli.main(["features", "--fast", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


@pytest.mark.slow
def test_features_cli_records_the_option_and_saves_an_evaluable_student(tmp_path, capsys):
    from kd_helpers import cli
    from kd_helpers.cache import read_json_checked
    from kd_helpers.data import corpus_dir

    out = tmp_path / "out"
    args = ["features", "--fast", "--feature-loss", "hidden,attention", "--feature-weight", "0.5,2",
            "--seeds", "1", "--steps", "4", "--output-dir", str(out)]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "| logit+hiddenx0.5+attentionx2 |" in printed and "| ce |" in printed
    report = read_json_checked(out / "features" / "results.json")
    assert report["feature_loss"] == "hidden,attention"
    assert report["feature_weights"] == {"hidden": 0.5, "cosine": 0.0, "attention": 2.0}
    assert [row["method"] for row in report["summary"]] == ["ce", "logit", "logit+hiddenx0.5+attentionx2"]
    assert report["saved_student"]["method"] == "logit+hiddenx0.5+attentionx2"
    assert cli.main(["evaluate", "--model", str(out / "features" / "student"),
                     "--data", str(corpus_dir() / "test.csv"), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert payload["n"] > 0 and 0.0 <= payload["accuracy"] <= 1.0
    assert cli.main(args) == 0  # resumed: nothing left to train, the student is trained again to be saved
    assert "seed 1: test accuracy" not in capsys.readouterr().out


def _fake_results():
    """A results file's shape with made-up runs (the explorer only reads it)."""
    runs = {}
    for k, (name, alpha, weights) in enumerate([("ce", 0.0, FeatureWeights()), ("logit", 0.7, FeatureWeights()),
                                                ("logit+hidden+attention", 0.7, FeatureWeights(1.0, 0.0, 1.0))]):
        per_seed = {}
        for seed in (1, 2, 3):
            acc = [0.5 + 0.01 * (k + seed + e) for e in range(4)]
            per_seed[str(seed)] = {
                "test_accuracy": acc[-1], "correct": "".join("1" if (i + seed + k) % 3 else "0" for i in range(30)),
                "history": [{"step": 10 * (e + 1), "accuracy": a} for e, a in enumerate(acc)],
                "steps": [{"step": 4 * (i + 1), "total_loss": 1.0 / (i + 1), "distill_loss": 0.5, "student_loss": 0.4,
                           "hidden_loss": weights.hidden * 0.3, "cosine_loss": 0.0,
                           "attention_loss": weights.attention * 2.0} for i in range(10)]}
        runs[name] = {"weights": {"hidden": weights.hidden, "cosine": 0.0, "attention": weights.attention},
                      "alpha": alpha, "per_seed": per_seed}
    return {"kind": beyond.KIND, "runs": runs, "teacher_test_accuracy": 0.9, "test_rows": 30, "steps": 40,
            "key": {"batch_size": 32}}


def test_feature_explorer_plots_the_selected_runs_mean_over_seeds():
    from kd_helpers.feature_explorer import feature_explorer

    results = _fake_results()
    explorer = feature_explorer(results)
    assert list(explorer.hidden.options) == [("0", 0.0), ("1", 1.0)]
    explorer.select(1.0, 1.0)
    lines = [line for line in explorer.axes["accuracy"].lines if line.get_marker() == "o"]
    expected = beyond.mean_history(results["runs"]["logit+hidden+attention"], [1, 2, 3])
    assert list(lines[-1].get_ydata()) == pytest.approx([h["accuracy"] for h in expected])
    legend = [t.get_text() for t in explorer.axes["steps"].get_legend().get_texts()]
    assert "hidden MSE" in legend and "attention KL" in legend and "hidden cosine" not in legend
    assert "logit+hidden+attention" in explorer.status.value and "vs logit KD" in explorer.status.value
    explorer.select(1.0, 0.0)  # a weighting nobody trained
    assert "not trained yet" in explorer.status.value
    assert explorer.train() is None and "feature_setup=" in explorer.status.value and explorer.train_button.disabled


def test_compare_rejects_a_bad_variant_count(capsys):
    from kd_helpers import cli

    assert cli.main(["compare", "--fast", "--variants", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --variants 0: must be >= 1"


@pytest.mark.slow
def test_feature_step_gives_transfer_rows_soft_targets_only(feature_setup):
    """Rows labelled UNLABELLED (the transfer set) get the KL term alone, as in train_epoch."""
    from kd_helpers.features import feature_step
    from kd_helpers.loss import UNLABELLED, DistillationLoss, transfer_loss

    fs = feature_setup
    batch = next(iter(fs.setup.train_loader(seed=1)))
    batch["labels"][::2] = UNLABELLED
    student = experiment.new_student(fs.setup, kind="tiny", seed=1).eval()  # no dropout: two forwards agree
    criterion = DistillationLoss(4.0, 0.7)
    teacher_logits = fs.setup.cached_teacher(batch)
    hidden, attention = fs.features(batch["idx"], batch["input_ids"].shape[1])
    total, parts = feature_step(student, batch, teacher_logits, hidden, attention, criterion, FeatureWeights(),
                                fs.pairs, None, fs.setup.device)
    logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     token_type_ids=batch["token_type_ids"]).logits
    expected = transfer_loss(criterion, logits, teacher_logits, batch["labels"])
    assert total.item() == pytest.approx(expected[0].item(), rel=1e-6)
    assert parts["student_loss"] == pytest.approx(expected[2].item(), rel=1e-6)
