"""The two explorers of the notebooks: the loss (notebook 01) and the temperature x alpha sweep (notebook 04).

Each is an ipywidgets ``VBox``; display it as a cell's last line. All drawing goes through ``kd_helpers.plots``
onto a plain matplotlib ``Figure`` that is rendered to PNG into an ``Image`` widget: inline, no ipympl, and
the same in JupyterLab, VS Code and nbconvert. Sliders use ``continuous_update=False`` (one re-plot per move).
Tests and curious readers can reach ``.fig``, ``.axes``, the controls, and call ``.update()`` directly.
"""

from __future__ import annotations

import html
import io
import time
from pathlib import Path

import ipywidgets as widgets
import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure

from kd_helpers import plots, sweep
from kd_helpers.errors import KDError, NonFiniteLossError
from kd_helpers.loss import DistillationLoss

WIDE = {"description_width": "initial"}
PROJECTOR = {"font.size": plots.FONT_SIZE, "legend.fontsize": plots.FONT_SIZE - 2}  # readable from the back row


def render_png(fig: Figure) -> bytes:
    """The figure as PNG bytes (what the ``Image`` widget shows)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def default_logits(num_classes: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """One seeded example ``(teacher, student)``: a confident teacher and an unsure student, shape (1, C)."""
    generator = torch.Generator().manual_seed(seed)
    teacher = torch.randn(1, num_classes, generator=generator) * 3.0
    return teacher, torch.randn(1, num_classes, generator=generator)


class LossExplorer(widgets.VBox):
    """Sliders for T and alpha; bars of the softened distributions and the three loss components.

    The bars show the first row; the losses average over all rows. Labels default to the teacher's arg-max.
    """

    def __init__(self, teacher_logits=None, student_logits=None, labels=None, class_names=None):
        teacher = _as_2d(teacher_logits) if teacher_logits is not None else default_logits()[0]
        self.teacher_logits = teacher
        self.student_logits = (_as_2d(student_logits) if student_logits is not None
                               else default_logits(teacher.shape[1])[1].expand_as(teacher).clone())
        self.labels = teacher.argmax(-1) if labels is None else torch.as_tensor(labels).long().view(-1)
        self.class_names = class_names
        self.temperature = widgets.FloatSlider(value=4.0, min=0.5, max=20.0, step=0.5, description="temperature T",
                                               continuous_update=False, style=WIDE)
        self.alpha = widgets.FloatSlider(value=0.7, min=0.0, max=1.0, step=0.05, description="alpha (KL weight)",
                                         continuous_update=False, style=WIDE)
        self.caption = widgets.HTML()
        self.image = widgets.Image(format="png")
        self.fig = _figure()
        self.axes = dict(zip(("soft_targets", "by_temperature", "by_alpha"), self.fig.subplots(1, 3), strict=True))
        self.temperature.observe(self.update, names="value")
        self.alpha.observe(self.update, names="value")
        super().__init__([widgets.HBox([self.temperature, self.alpha]), self.caption, self.image])
        self.update()

    def components(self, temperature: float, alpha: float) -> dict:
        """``{"total", "distill", "student"}`` from ``DistillationLoss`` for the stored logits."""
        total, distill, student = DistillationLoss(temperature, alpha)(self.student_logits, self.teacher_logits,
                                                                       self.labels)
        return {"total": total.item(), "distill": distill.item(), "student": student.item()}

    @matplotlib.rc_context(PROJECTOR)
    def update(self, change=None) -> None:
        """Recompute and redraw for the sliders' current values."""
        T, alpha = float(self.temperature.value), float(self.alpha.value)
        soft, by_t, by_alpha = self.axes.values()
        for ax in self.axes.values():
            ax.clear()
        plots.plot_soft_targets(soft, self.teacher_logits.numpy(), self.student_logits.numpy(), T, self.class_names)
        temperatures = np.linspace(0.5, 20.0, 40)
        plots.plot_loss_components(by_t, temperatures, _stack([self.components(t, alpha) for t in temperatures]),
                                   current=T, xlabel=f"temperature T (alpha = {alpha:g})")
        alphas = np.linspace(0.0, 1.0, 21)
        plots.plot_loss_components(by_alpha, alphas, _stack([self.components(T, a) for a in alphas]),
                                   current=alpha, xlabel=f"alpha (T = {T:g})")
        now = self.components(T, alpha)
        self.caption.value = (f"<b>T = {T:g}, alpha = {alpha:g}</b>: total = {alpha:g} &times; {now['distill']:.4f} "
                              f"(distill) + {1 - alpha:g} &times; {now['student']:.4f} (student) = "
                              f"<b>{now['total']:.4f}</b>")
        self.image.value = render_png(self.fig)


def loss_explorer(teacher_logits=None, student_logits=None, labels=None, class_names=None) -> LossExplorer:
    """Notebook 01's explorer; without arguments it uses one seeded 5-class example."""
    return LossExplorer(teacher_logits, student_logits, labels, class_names)


class TrainingExplorer(widgets.VBox):
    """Pick (T, alpha) on the sweep grid: mean loss per step, mean accuracy curve ± 1 sd, and the heatmap.

    Every number is a mean over the seeds ticked in "seeds" (all by default). "compare with" overlays a second
    configuration. "Train this configuration" trains a (T, alpha) the sweep lacks, for the sweep's seeds, with
    ``setup`` (a ``transfer.TransferSetup``) and stores it in the sweep file, or, when ``setup`` differs from
    the sweep's (say fast mode against a full-mode sweep), in a side file under the cache, flagged as not
    comparable.
    """

    def __init__(self, results: dict, setup=None):
        self.results, self.setup = results, setup
        self.fig = _figure()
        self.axes = dict(zip(("steps", "accuracy", "heatmap"), self.fig.subplots(1, 3), strict=True))
        self.image = widgets.Image(format="png")
        self.temperature, self.alpha = _selection("T"), _selection("alpha")
        self.temperature2, self.alpha2 = _selection("T"), _selection("alpha")
        self.compare = widgets.Checkbox(value=False, description="compare with", indent=False)
        seeds = [str(s) for s in results.get("seeds", [])]
        self.seeds = widgets.SelectMultiple(options=seeds, value=tuple(seeds), description="seeds", rows=3,
                                            layout={"width": "160px"}, style=WIDE)
        self.free_temperature = widgets.BoundedFloatText(min=0.05, max=100.0, step=0.5, description="T",
                                                         layout={"width": "130px"}, style=WIDE)
        self.free_alpha = widgets.BoundedFloatText(min=0.0, max=1.0, step=0.05, description="alpha",
                                                   layout={"width": "150px"}, style=WIDE)
        self.train_button = widgets.Button(description="Train this configuration", icon="play",
                                           disabled=setup is None, layout={"width": "220px"},
                                           tooltip="" if setup is not None
                                           else "needs setup=transfer.prepare_transfer(...)")
        self.status, self.training_output, self.last_update_s = widgets.HTML(), widgets.Output(), 0.0
        self._quiet = False
        self.view = results
        self._set_options()
        best = max((r for k, r in results.get("runs", {}).items() if k != sweep.BASELINE and r.get("per_seed")),
                   default=None, key=lambda r: r["accuracy"])
        if best is not None:
            self.select(best["temperature"], best["alpha"])
        for control in (self.temperature, self.alpha, self.temperature2, self.alpha2, self.compare, self.seeds):
            control.observe(self.update, names="value")
        self.train_button.on_click(self.train)
        controls = widgets.HBox([
            widgets.VBox([widgets.HBox([self.temperature, self.alpha]),
                          widgets.HBox([self.compare, self.temperature2, self.alpha2]),
                          widgets.HBox([self.free_temperature, self.free_alpha, self.train_button])]),
            self.seeds])
        super().__init__([controls, self.status, self.image, self.training_output])
        self.update()

    def select(self, temperature: float | None, alpha: float, second: bool = False) -> None:
        """Move the (first or compared) selection to a configuration on the grid."""
        t_control, a_control = (self.temperature2, self.alpha2) if second else (self.temperature, self.alpha)
        if temperature is not None:
            t_control.value = float(temperature)
        a_control.value = float(alpha)

    @matplotlib.rc_context(PROJECTOR)
    def update(self, change=None) -> None:
        """Redraw the three panels for the current selection(s) and seeds, from the results in memory."""
        if self._quiet:
            return
        start = time.perf_counter()
        self.view = sweep.select_seeds(self.results, [int(s) for s in self.seeds.value])
        for ax in self.axes.values():
            ax.clear()
        picks = [(self.temperature.value, self.alpha.value, "-")]
        if self.compare.value:
            picks.append((self.temperature2.value, self.alpha2.value, "--"))
        for control in (self.temperature2, self.alpha2):
            control.disabled = not self.compare.value
        baseline = sweep.find_run(self.view, None, 0.0)
        for n, (t, a, style) in enumerate(picks):
            run, name = sweep.find_run(self.view, t, a), _name(t, a)
            name += " (other setup)" if run and run.get("other_setup") else ""
            plots.plot_step_losses(self.axes["steps"], run["steps"] if run else [],
                                   label=name if len(picks) > 1 else "", linestyle=style)
            plots.plot_accuracy_curves(self.axes["accuracy"], run["history"] if run else [],
                                       teacher_accuracy=None if n else self.view.get("teacher_accuracy"),
                                       baseline_accuracy=None if n or not baseline or run is baseline
                                       else baseline["history"],
                                       label=name, linestyle=style, legend_loc="best",
                                       color=plots.PALETTE["purple"] if n else plots.STUDENT)
        ts, alphas = self._grid_axes()
        n_seeds = len(self.seeds.value)
        plots.plot_heatmap(self.axes["heatmap"], sweep.accuracy_grid(self.view, ts, alphas), ts, alphas,
                           highlight=[(t, a) for t, a, _ in picks],
                           reference=baseline["accuracy"] if baseline else None,
                           significant=sweep.significance_grid(self.view, ts, alphas),
                           title=f"Mean final accuracy, {n_seeds} seed(s) (box: selected)\n"
                           + ("white = CE-only; * beyond 2 SE of the paired difference" if baseline else ""))
        self.free_temperature.value, self.free_alpha.value = self.temperature.value, self.alpha.value
        self.status.value = self._summary(picks)
        self.image.value = render_png(self.fig)
        self.last_update_s = time.perf_counter() - start

    def train(self, _button=None) -> dict | None:
        """Train (T, alpha) from the number boxes, for the sweep's seeds, unless it is already there."""
        t, a = float(self.free_temperature.value), float(self.free_alpha.value)
        if self.setup is None:
            self.status.value = ("Pass <code>setup=transfer.prepare_transfer(experiment.prepare(config))</code> "
                                 "to train new configurations.")
            return None
        if sweep.find_run(self.results, t, a) is not None:
            self._show(t, a, f"{_name(t, a)} is already in the sweep.")
            return sweep.find_run(self.results, t, a)
        target, path, same = sweep.target_for(self.results, self.setup)
        if sweep.find_run(target, t, a) is not None:  # trained earlier into the side file
            self.results["runs"][sweep.run_key(t, a)] = {**sweep.find_run(target, t, a), "other_setup": True}
            self._show(t, a, f"{_name(t, a)} was trained earlier with this setup ({path}).")
            return sweep.find_run(target, t, a)
        self.train_button.disabled = True
        seeds = target["seeds"]
        self.status.value = f"Training {_name(t, a)} for seeds {seeds}, {target['steps']} steps each..."
        record = None
        try:
            with self.training_output:
                for seed in seeds:
                    record = sweep.train_config(self.setup, target, t, a, seed, path, progress=True)
        except (KDError, NonFiniteLossError) as exc:
            self.status.value = f"<span style='color:red'>error: {html.escape(str(exc))}</span>"
            return None
        except KeyboardInterrupt:
            record = None
        finally:
            self.train_button.disabled = False
        if record is None or record["n"] < len(seeds):
            self.status.value = f"Interrupted: {_name(t, a)} has only the seeds that finished."
            if record is None:
                return None
        if not same:
            self.results["runs"][sweep.run_key(t, a)] = {**record, "other_setup": True}
        self._show(t, a, f"Trained {_name(t, a)}: mean accuracy {record['accuracy']:.1%} over {record['n']} seed(s), "
                   f"stored in {path}" + ("" if same else " (setup differs from the sweep's: not comparable)"))
        return record

    def _summary(self, picks: list) -> str:
        missing = [_name(t, a) for t, a, _ in picks if sweep.find_run(self.view, t, a) is None]
        if missing:
            return f"Not trained yet (for these seeds): {', '.join(missing)}. Use <i>Train this configuration</i>."
        baseline, teacher = sweep.find_run(self.view, None, 0.0), self.view.get("teacher_accuracy")
        parts = []
        for t, a, _ in picks:
            run = sweep.find_run(self.view, t, a)
            text = f"{_name(t, a)}: <b>{run['accuracy']:.1%} ± {run['sd']:.1%}</b>"
            paired = sweep.paired_vs_baseline(self.view, run)
            if paired:
                verdict = "beyond the noise" if paired["significant"] else "within the noise"
                text += f" ({paired['difference']:+.1%} vs CE-only, SE {paired['se']:.1%}: {verdict})"
            parts.append(text)
        parts += [f"CE only: {baseline['accuracy']:.1%} ± {baseline['sd']:.1%}"] if baseline and all(
            a != 0 for _, a, _ in picks) else []
        parts += [f"teacher: {teacher:.1%}"] if teacher is not None else []
        return (f"Final validation accuracy, mean ± sd over {len(self.seeds.value)} seed(s) &mdash; "
                + ", ".join(parts))

    def _show(self, t: float, a: float, message: str) -> None:
        self._quiet = True
        try:
            self._set_options(extra=(t, a))
            self.select(t if a != 0 else None, a)
        finally:
            self._quiet = False
        self.update()
        self.status.value = message

    def _grid_axes(self) -> tuple[list, list]:
        runs = [r for k, r in self.results.get("runs", {}).items() if k != sweep.BASELINE]
        ts = sorted(set(self.results.get("temperatures", [])) | {r["temperature"] for r in runs})
        alphas = sorted({0.0} | set(self.results.get("alphas", [])) | {r["alpha"] for r in runs})
        if not runs:  # an empty sweep: offer the setup's own (T, alpha)
            cfg = self.setup.setup.config if self.setup is not None else None
            ts = ts or [cfg.temperature if cfg else 4.0]
            alphas = sorted(set(alphas) | {cfg.alpha if cfg else 0.7})
        return ts, alphas

    def _set_options(self, extra: tuple | None = None) -> None:
        ts, alphas = self._grid_axes()
        if extra is not None:
            ts = sorted(set(ts) | ({extra[0]} if extra[1] != 0 else set()))
            alphas = sorted(set(alphas) | {extra[1]})
        for control, values in ((self.temperature, ts), (self.temperature2, ts), (self.alpha, alphas),
                                (self.alpha2, alphas)):
            keep = control.value if control.options and control.value in values else values[len(values) // 2]
            control.options = [(f"{v:g}", float(v)) for v in values]
            control.value = keep


def training_explorer(sweep_results: dict | str | Path, setup=None) -> TrainingExplorer:
    """Notebook 04's explorer over a sweep: a dict from ``sweep.run_sweep`` / ``sweep.load_sweep``, or a path."""
    results = sweep_results if isinstance(sweep_results, dict) else sweep.load_sweep(sweep_results)
    return TrainingExplorer(results, setup)


def _figure() -> Figure:
    # fixed margins: constrained layout would double the cost of every re-plot
    fig = Figure(figsize=(15, 4.8), dpi=100)
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.14, top=0.85, wspace=0.24)  # room for 2-line titles
    return fig


def _selection(name: str) -> widgets.SelectionSlider:
    return widgets.SelectionSlider(options=[("0", 0.0)], description=name, continuous_update=False, style=WIDE)


def _name(temperature: float, alpha: float) -> str:
    return "CE only (alpha=0)" if alpha == 0 else f"T={temperature:g}, alpha={alpha:g}"


def _stack(rows: list[dict]) -> dict:
    return {k: [row[k] for row in rows] for k in rows[0]}


def _as_2d(logits) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(logits, dtype=np.float32))
    return tensor.view(1, -1) if tensor.dim() == 1 else tensor
