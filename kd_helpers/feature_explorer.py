"""Notebook 05's widget: weight the feature losses, see the runs trained with those weights (or train them).

Two sliders pick the hidden-state and attention weights among the runs stored in the results file
(:mod:`kd_helpers.beyond`); the figure shows that run's loss components per step and its validation accuracy
(mean ± 1 sd over the seeds) beside logit KD and CE-only. Number boxes and *Train these weights* train a
weighting the file lacks, for the file's seeds, and store it there.
"""

from __future__ import annotations

import html

import ipywidgets as widgets
import matplotlib
from matplotlib.figure import Figure

from kd_helpers import beyond, plots
from kd_helpers.errors import KDError, NonFiniteLossError
from kd_helpers.features import FeatureWeights
from kd_helpers.widgets import PROJECTOR, WIDE, render_png


class FeatureExplorer(widgets.VBox):
    """Pick (hidden weight, attention weight): loss components per step and accuracy curves, from stored runs."""

    def __init__(self, results: dict, feature_setup=None, seeds=beyond.SEEDS):
        self.results, self.fs, self.seeds = results, feature_setup, [int(s) for s in seeds]
        self.fig = Figure(figsize=(14, 4.6), dpi=100)
        self.fig.subplots_adjust(left=0.06, right=0.99, bottom=0.14, top=0.88, wspace=0.22)
        self.axes = dict(zip(("steps", "accuracy"), self.fig.subplots(1, 2), strict=True))
        self.image = widgets.Image(format="png")
        self.hidden = widgets.SelectionSlider(options=[0.0], description="hidden weight", continuous_update=False,
                                              style=WIDE)
        self.attention = widgets.SelectionSlider(options=[0.0], description="attention weight",
                                                 continuous_update=False, style=WIDE)
        self.free_hidden = widgets.BoundedFloatText(min=0, max=100, step=0.1, description="hidden", style=WIDE,
                                                    layout={"width": "150px"})
        self.free_attention = widgets.BoundedFloatText(min=0, max=100, step=0.1, description="attention",
                                                       style=WIDE, layout={"width": "160px"})
        self.train_button = widgets.Button(description="Train these weights", icon="play",
                                           disabled=feature_setup is None, layout={"width": "200px"},
                                           tooltip="" if feature_setup is not None else "needs feature_setup=...")
        self.status, self.training_output = widgets.HTML(), widgets.Output()
        self._quiet = False
        self._set_options()
        for control in (self.hidden, self.attention):
            control.observe(self.update, names="value")
        self.train_button.on_click(self.train)
        controls = widgets.VBox([widgets.HBox([self.hidden, self.attention]),
                                 widgets.HBox([self.free_hidden, self.free_attention, self.train_button])])
        super().__init__([controls, self.status, self.image, self.training_output])
        self.update()

    def runs(self) -> dict:
        """Stored KD runs by (hidden weight, attention weight) (cosine-only runs are left out)."""
        return {(r["weights"]["hidden"], r["weights"]["attention"]): r for name, r in self.results["runs"].items()
                if name != "ce" and r["alpha"] > 0 and r["weights"]["cosine"] == 0}

    def select(self, hidden: float, attention: float) -> None:
        self.hidden.value, self.attention.value = float(hidden), float(attention)

    @matplotlib.rc_context(PROJECTOR)
    def update(self, change=None) -> None:
        """Redraw both panels for the selected weights."""
        if self._quiet:
            return
        for ax in self.axes.values():
            ax.clear()
        key = (self.hidden.value, self.attention.value)
        run, runs = self.runs().get(key), self.results["runs"]
        name = FeatureWeights(hidden=key[0], attention=key[1]).name()
        plots.plot_feature_steps(self.axes["steps"], beyond.mean_steps(run, self.seeds) if run else [], label=name)
        reference = [("ce", "CE-only", plots.METHODS["ce"]), ("logit", "logit KD", plots.METHODS["aug_ce"])]
        for other, label, style in reference:
            if other in runs and other != name:
                plots.plot_accuracy_curves(self.axes["accuracy"], beyond.mean_history(runs[other], self.seeds),
                                           label=label, linestyle=style["ls"], color=style["color"])
        plots.plot_accuracy_curves(self.axes["accuracy"], beyond.mean_history(run, self.seeds) if run else [],
                                   teacher_accuracy=None, label=name, color=plots.STUDENT, legend_loc="best")
        self.free_hidden.value, self.free_attention.value = key
        self.status.value = self._summary(name)
        self.image.value = render_png(self.fig)

    def _summary(self, name: str) -> str:
        rows = {row["method"]: row for row in beyond.summary(self.results)}
        parts = []
        for method in dict.fromkeys([name, "logit", "ce"]):
            if method in rows:
                row = rows[method]
                text = f"{method}: <b>{row['mean']:.1%} ± {row['sd']:.1%}</b>"
                if method != "logit" and "vs_logit" in row:
                    text += f" ({row['vs_logit']['difference']:+.1%} vs logit KD, p = {row['vs_logit']['p_value']:.2g})"
                parts.append(text)
        if name not in rows:
            parts.insert(0, f"{name}: not trained yet: <i>Train these weights</i>")
        return f"Test accuracy, mean ± sd over seeds {self.seeds} &mdash; " + ", ".join(parts)

    def train(self, _button=None):
        """Train the weights in the number boxes for every seed the file lacks, store them, show them."""
        weights = FeatureWeights(hidden=float(self.free_hidden.value), attention=float(self.free_attention.value))
        if self.fs is None:
            self.status.value = "Pass <code>feature_setup=beyond.prepare_features(setup)</code> to train."
            return None
        self.train_button.disabled = True
        self.status.value = f"Training {weights.name()} for seeds {self.seeds}..."
        try:
            with self.training_output:
                beyond.run_comparison(self.fs, self.results, {weights.name(): (0.7, weights)}, self.seeds)
        except (KDError, NonFiniteLossError) as exc:
            self.status.value = f"<span style='color:red'>error: {html.escape(str(exc))}</span>"
            return None
        finally:
            self.train_button.disabled = False
        self._quiet = True
        try:
            self._set_options()
            self.select(weights.hidden, weights.attention)
        finally:
            self._quiet = False
        self.update()
        return self.results["runs"][weights.name()]

    def _set_options(self) -> None:
        keys = list(self.runs()) or [(0.0, 0.0)]
        for control, values in ((self.hidden, sorted({k[0] for k in keys} | {0.0})),
                                (self.attention, sorted({k[1] for k in keys} | {0.0}))):
            keep = control.value if control.value in values else values[-1]
            control.options = [(f"{v:g}", float(v)) for v in values]
            control.value = keep


def feature_explorer(results: dict, feature_setup=None, seeds=beyond.SEEDS) -> FeatureExplorer:
    """Notebook 05's explorer over a results dict from :func:`kd_helpers.beyond.open_results`."""
    return FeatureExplorer(results, feature_setup, seeds)
