"""Plots and explorers, headless: moving a control redraws the figure with the right numbers, fast enough."""

from __future__ import annotations

import statistics
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from kd_helpers import experiment, plots, sweep, widgets
from kd_helpers.config import KDConfig
from kd_helpers.loss import DistillationLoss
from kd_helpers.metrics import reliability_bins
from kd_helpers.train import TrainingRun

N_ROWS = 50


def _seed_run(temperature, alpha, seed, evals=4, stride=8):
    acc = 0.6 + 0.1 * alpha + 0.01 * (temperature or 0) + 0.01 * seed
    history = [{"step": 8 * e, "loss": 1.0, "distill_loss": 0.5, "student_loss": 0.7, "accuracy": acc - 0.05 / e}
               for e in range(1, evals + 1)]
    steps = [{"step": s, "total_loss": alpha + 0.001 * s + 0.01 * seed, "distill_loss": 2 * alpha,
              "student_loss": 0.7 - 0.001 * s} for s in range(stride, 8 * evals + 1, stride)]
    right = round(history[-1]["accuracy"] * N_ROWS)
    return {"accuracy": history[-1]["accuracy"], "history": history, "steps": steps,
            "correct": "1" * right + "0" * (N_ROWS - right)}


def _run(temperature, alpha, seeds=(1, 2, 3)):
    record = {"temperature": temperature, "alpha": alpha,
              "per_seed": {str(s): _seed_run(temperature, alpha, s) for s in seeds}}
    sweep._summarise(record)
    return record


@pytest.fixture
def results():
    """A hand-made 3 x 2 sweep with a baseline and three seeds, as ``sweep.run_sweep`` would store it."""
    temperatures, alphas = [1.0, 2.0, 4.0], [0.5, 0.9]
    runs = {sweep.run_key(t, a): _run(t, a) for t in temperatures for a in alphas}
    runs["baseline"] = _run(None, 0.0)
    return {"kind": sweep.KIND, "key": {"steps": 32}, "key_hash": "h", "steps": 32, "evals": 4, "seeds": [1, 2, 3],
            "temperatures": temperatures, "alphas": alphas, "runs": runs, "teacher_accuracy": 0.9,
            "interrupted": False}


def _bars(ax):
    return [[bar.get_height() for bar in container] for container in ax.containers]


def _line(ax, label):
    return next(line for line in ax.lines if line.get_label() == label)


def test_loss_explorer_slider_rerenders_with_the_new_temperature():
    explorer = widgets.loss_explorer()
    before = bytes(explorer.image.value)
    explorer.temperature.value = 8.0
    teacher, student = explorer.teacher_logits.numpy()[0], explorer.student_logits.numpy()[0]
    heights = _bars(explorer.axes["soft_targets"])
    np.testing.assert_allclose(heights[0], torch.softmax(torch.tensor(teacher) / 8.0, -1).numpy(), rtol=1e-6)
    np.testing.assert_allclose(heights[1], torch.softmax(torch.tensor(student) / 8.0, -1).numpy(), rtol=1e-6)
    after = bytes(explorer.image.value)
    assert after != before and after.startswith(b"\x89PNG")
    current = [line for line in explorer.axes["by_temperature"].lines if line.get_label().startswith("current")]
    assert current[0].get_xdata()[0] == 8.0
    total, distill, student_loss = DistillationLoss(8.0, 0.7)(explorer.student_logits, explorer.teacher_logits,
                                                              explorer.labels)
    assert f"{total.item():.4f}" in explorer.caption.value and "T = 8" in explorer.caption.value


def test_loss_explorer_alpha_moves_only_the_total():
    explorer = widgets.loss_explorer([[2.0, -1.0]], [[0.5, 0.0]], labels=[0])
    explorer.alpha.value = 0.25
    ax = explorer.axes["by_temperature"]
    total, distill, student = (_line(ax, name).get_ydata() for name in ("total", "distill (KL x T²)", "student (CE)"))
    np.testing.assert_allclose(total, 0.25 * np.asarray(distill) + 0.75 * np.asarray(student), rtol=1e-5)
    assert len(_bars(explorer.axes["soft_targets"])[0]) == 2


def test_training_explorer_replots_the_selected_configuration(results):
    explorer = widgets.training_explorer(results)
    assert (explorer.temperature.value, explorer.alpha.value) == (4.0, 0.9)  # starts on the best run
    explorer.temperature.value, explorer.alpha.value = 2.0, 0.5
    run = results["runs"]["T=2,alpha=0.5"]
    steps, accuracy = explorer.axes["steps"], explorer.axes["accuracy"]
    np.testing.assert_allclose(_line(steps, "total").get_ydata(), [s["total_loss"] for s in run["steps"]])
    curve = _line(accuracy, "T=2, alpha=0.5")
    np.testing.assert_allclose(curve.get_xdata(), [8, 16, 24, 32])  # one point per evaluation step
    np.testing.assert_allclose(curve.get_ydata(), [h["accuracy"] for h in run["history"]])
    assert len(accuracy.collections) == 2  # the ±1 sd bands of the run and of the CE-only baseline
    assert _line(accuracy, "teacher 90.0%").get_ydata()[0] == 0.9
    np.testing.assert_allclose(_line(accuracy, "CE-only (alpha = 0)").get_ydata(),
                               [h["accuracy"] for h in results["runs"]["baseline"]["history"]])
    heatmap = explorer.axes["heatmap"]
    box = heatmap.patches[0]  # columns: alpha 0 (baseline), 0.5, 0.9; rows: T 1, 2, 4
    assert (box.get_x() + 0.5, box.get_y() + 0.5) == (1, 1)
    row = [results["runs"][key]["accuracy"] for key in ("baseline", "T=2,alpha=0.5", "T=2,alpha=0.9")]
    np.testing.assert_allclose(heatmap.images[0].get_array()[1], row)
    assert "T=2, alpha=0.5: <b>" in explorer.status.value and "±" in explorer.status.value


def test_explorer_plots_the_mean_of_the_selected_seeds(results):
    explorer = widgets.training_explorer(results)
    explorer.temperature.value, explorer.alpha.value = 2.0, 0.5
    explorer.seeds.value = ("1", "3")
    per_seed = results["runs"]["T=2,alpha=0.5"]["per_seed"]
    expected = [np.mean([per_seed[s]["history"][i]["accuracy"] for s in ("1", "3")]) for i in range(4)]
    np.testing.assert_allclose(_line(explorer.axes["accuracy"], "T=2, alpha=0.5").get_ydata(), expected)
    mean_final = np.mean([per_seed[s]["accuracy"] for s in ("1", "3")])
    np.testing.assert_allclose(explorer.axes["heatmap"].images[0].get_array()[1, 1], mean_final)
    assert "over 2 seed(s)" in explorer.status.value
    explorer.seeds.value = ("2",)  # one seed: no spread to show
    np.testing.assert_allclose(_line(explorer.axes["accuracy"], "T=2, alpha=0.5").get_ydata(),
                               [h["accuracy"] for h in per_seed["2"]["history"]])


def test_heatmap_stars_only_cells_beyond_two_standard_errors(results):
    explorer = widgets.training_explorer(results)
    texts = [t.get_text() for t in explorer.axes["heatmap"].texts]
    stars = sweep.significance_grid(results, [1.0, 2.0, 4.0], [0.0, 0.5, 0.9])
    assert sum(t.endswith("*") for t in texts) == stars.sum() > 0
    assert not stars[:, 0].any()  # the baseline column is the reference itself


def test_compare_mode_overlays_a_second_configuration(results):
    explorer = widgets.training_explorer(results)
    explorer.compare.value = True
    explorer.select(1.0, 0.5, second=True)
    dashed = [line for line in explorer.axes["steps"].lines if line.get_linestyle() == "--" and len(line.get_xdata())]
    second = results["runs"]["T=1,alpha=0.5"]
    np.testing.assert_allclose(dashed[0].get_ydata(), [s["total_loss"] for s in second["steps"]])
    labels = [line.get_label() for line in explorer.axes["accuracy"].lines]
    assert "T=4, alpha=0.9" in labels and "T=1, alpha=0.5" in labels
    assert len(explorer.axes["heatmap"].patches) == 2
    explorer.alpha2.value = 0.0  # the CE-only run can be compared too
    assert "CE only (alpha=0)" in [line.get_label() for line in explorer.axes["accuracy"].lines]


def test_replot_from_cache_takes_under_a_second(results):
    explorer = widgets.training_explorer(results)
    explorer.compare.value = True
    timings = []
    for t in [1.0, 2.0, 4.0, 1.0, 2.0]:
        start = time.perf_counter()
        explorer.temperature.value = t
        timings.append(time.perf_counter() - start)
    print(f"re-plot: median {statistics.median(timings):.3f} s, max {max(timings):.3f} s")
    assert statistics.median(timings) < 1.0


def test_a_missing_configuration_says_so(results):
    del results["runs"]["T=1,alpha=0.9"]
    explorer = widgets.training_explorer(results)
    explorer.select(1.0, 0.9)
    assert "Not trained yet (for these seeds): T=1, alpha=0.9" in explorer.status.value
    assert explorer.axes["heatmap"].images[0].get_array().mask[0, 2]  # NaN: masked, drawn blank
    assert explorer.train_button.disabled  # no setup given


def _fake_ts(fast=True):
    split = {"text": ["a", "b"], "label": [0, 1]}
    setup = SimpleNamespace(config=KDConfig(student="tiny", fast=fast), splits={"train": split, "validation": split},
                            teacher_id="t", teacher=None, teacher_val_loader=None, val_loader=None, device="cpu")
    return SimpleNamespace(setup=setup, fraction=0.1, n_variants=8, labelled_ids=[0], transfer_ids=[1])


def test_train_button_with_another_setup_uses_a_side_file(results, monkeypatch, tmp_path):
    """A setup that differs from the sweep's (fast vs full) never writes into the sweep's own file."""
    monkeypatch.setenv("KD_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(sweep, "evaluate_model", lambda *args: 0.8)
    trained = []

    def train_method(ts, method, seed, steps, temperature, alpha, evals, kind, progress):
        trained.append((temperature, alpha, seed))
        run = _seed_run(temperature, alpha, seed)
        return SimpleNamespace(acc=run["accuracy"]), TrainingRun(history=run["history"], steps=run["steps"])

    def predictions(student, loader, device):
        right = round(student.acc * N_ROWS)
        return torch.tensor([1] * right + [0] * (N_ROWS - right)), torch.ones(N_ROWS, dtype=torch.long)

    monkeypatch.setattr(sweep, "train_method", train_method)
    monkeypatch.setattr(sweep, "predictions", predictions)
    explorer = widgets.training_explorer(results, _fake_ts())
    explorer.free_temperature.value, explorer.free_alpha.value = 3.0, 0.7
    explorer.train_button.click()
    assert (explorer.temperature.value, explorer.alpha.value) == (3.0, 0.7)
    assert [seed for *_, seed in trained] == [1, 2, 3]  # every seed of the sweep
    assert results["runs"]["T=3,alpha=0.7"]["other_setup"] and "not comparable" in explorer.status.value
    side = sweep.load_sweep(next((tmp_path / "sweeps").glob("*.json")))
    assert list(side["runs"]) == ["T=3,alpha=0.7"] and side["key"]["fast"] is True
    fresh = {**results, "runs": {k: v for k, v in results["runs"].items() if k != "T=3,alpha=0.7"}}
    again = widgets.training_explorer(fresh, _fake_ts())  # a new session: found in the side file, not retrained
    again.free_temperature.value, again.free_alpha.value = 3.0, 0.7
    again.train_button.click()
    assert len(trained) == 3 and "trained earlier" in again.status.value


@pytest.mark.slow
def test_train_button_trains_into_the_sweep_file(tmp_path):
    """Real fast-mode training: the teacher comes from the test cache after the first run."""
    from kd_helpers import transfer

    setup = experiment.prepare(KDConfig(student="tiny", fast=True), log=lambda *_: None, progress=False)
    ts = transfer.prepare_transfer(setup, fraction=0.5, log=lambda *_: None)
    path = tmp_path / "sweep.json"
    results = sweep.open_sweep(ts, 16, 8, [1, 2], path)
    sweep.save_sweep(results, path)
    explorer = widgets.training_explorer(sweep.load_sweep(path), ts)
    assert "Not trained yet" in explorer.status.value
    explorer.free_temperature.value, explorer.free_alpha.value = 3.0, 0.6
    start = time.perf_counter()
    explorer.train_button.click()
    print(f"train button: {time.perf_counter() - start:.1f} s")
    stored = sweep.load_sweep(path)["runs"]["T=3,alpha=0.6"]
    assert stored["n"] == 2 and len(stored["history"]) == 8 and [s["step"] for s in stored["steps"]] == [8, 16]
    assert (explorer.temperature.value, explorer.alpha.value) == (3.0, 0.6)
    np.testing.assert_allclose(_line(explorer.axes["steps"], "total").get_ydata(),
                               [s["total_loss"] for s in stored["steps"]])
    assert "Trained T=3, alpha=0.6" in explorer.status.value
    explorer.train_button.click()  # already there: shown, not retrained
    assert "already in the sweep" in explorer.status.value


def test_pure_plots_draw_labelled_axes():
    fig = Figure(figsize=(12, 8))
    axes = fig.subplots(2, 3).ravel()
    rng = np.random.default_rng(0)
    probs = rng.dirichlet([1, 1], size=200)
    labels = rng.integers(0, 2, size=200)
    bins = reliability_bins(probs, labels, n_bins=10)
    plots.plot_reliability(axes[0], bins)
    filled = bins["count"] > 0
    np.testing.assert_allclose(_bars(axes[0])[0], bins["accuracy"][filled])
    plots.plot_confusion(axes[1], [[40, 10], [5, 45]])
    assert [t.get_text() for t in axes[1].texts] == ["40", "10", "5", "45"]
    models = {name: {"accuracy": acc, "latency_ms_batch1": ms, "size_mb": mb}
              for name, acc, ms, mb in [("teacher", 0.9, 20.0, 90.0), ("student_kd", 0.85, 5.0, 20.0)]}
    plots.plot_accuracy_vs_latency(axes[2], models)
    np.testing.assert_allclose(axes[2].collections[1].get_offsets()[0], [5.0, 0.85])
    plots.plot_heatmap(axes[3], [[0.8, np.nan], [0.7, 0.9]], [2.0, 4.0], [0.5, 0.9], highlight=(4.0, 0.9))
    assert "–" in [t.get_text() for t in axes[3].texts] and axes[3].patches[0].get_xy() == (0.5, 0.5)
    axes[3].clear()  # centred on a reference: equal is the scale's middle, and the scale spans >= 4 points
    plots.plot_heatmap(axes[3], [[0.80, 0.805], [0.79, 0.80]], [2.0, 4.0], [0.5, 0.9], reference=0.80)
    norm = axes[3].images[0].norm
    assert (norm.vmin, norm.vmax) == pytest.approx((0.78, 0.82)) and norm(0.80) == pytest.approx(0.5)
    plots.plot_step_losses(axes[4], [])
    plots.plot_accuracy_curves(axes[5], [{"epoch": 1, "accuracy": 0.7}], teacher_accuracy=0.9, baseline_accuracy=0.6)
    assert axes[5].get_xlabel() == "epoch" and not axes[5].collections  # no band without a spread
    for ax in axes:
        assert ax.get_xlabel() and ax.get_title()
    assert widgets.render_png(fig).startswith(b"\x89PNG")
