"""Every figure of the tutorial: pure functions that take data and a matplotlib ``Axes`` and draw on it.

They never create figures or call ``plt.show()``, so notebooks, widgets and tests share them unchanged::

    fig, ax = plt.subplots()
    plot_soft_targets(ax, teacher_logits, student_logits, temperature=4.0)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.patches import Rectangle

# Okabe & Ito's colour-blind-safe palette; every series also differs by line style or marker, never by colour alone.
PALETTE = {"black": "#000000", "orange": "#E69F00", "sky": "#56B4E9", "green": "#009E73", "yellow": "#F0E442",
           "blue": "#0072B2", "vermillion": "#D55E00", "purple": "#CC79A7", "grey": "#999999"}
TEACHER, STUDENT, BASELINE = PALETTE["blue"], PALETTE["vermillion"], PALETTE["black"]
# (key, legend name, colour, line style, marker): the loss components of one run
COMPONENTS = (("total", "total", PALETTE["black"], "-", "o"), ("distill", "distill (KL x T²)", PALETTE["purple"],
              "--", "^"), ("student", "student (CE)", PALETTE["green"], ":", "s"))
# the three students of notebook 03 and the comparisons: colour, marker, line style
METHODS = {"kd": {"color": STUDENT, "marker": "o", "ls": "-"},
           "ce": {"color": BASELINE, "marker": "s", "ls": "-."},
           "aug_ce": {"color": PALETTE["sky"], "marker": "^", "ls": "--"},
           "teacher": {"color": TEACHER, "marker": "D", "ls": "--"}}
SERIES = tuple({"color": PALETTE[c], "marker": m, "ls": ls} for c, m, ls in (
    ("blue", "o", "-"), ("vermillion", "s", "--"), ("green", "^", "-."), ("orange", "D", ":"),
    ("purple", "v", "-"), ("sky", "P", "--"), ("black", "X", "-.")))
FONT_SIZE = 12  # widgets and exported figures: readable from the back of a room


def softmax(logits, temperature: float = 1.0) -> np.ndarray:
    """``softmax(logits / T)`` along the last axis, in float64 (what the bars show)."""
    z = np.asarray(logits, dtype=float) / temperature
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def plot_soft_targets(ax: Axes, teacher_logits, student_logits, temperature: float,
                      class_names: Sequence[str] | None = None) -> None:
    """Side-by-side bars of ``softmax(logits / T)`` for the teacher and the student (first row if 2-D)."""
    teacher = softmax(np.atleast_2d(np.asarray(teacher_logits, dtype=float))[0], temperature)
    student = softmax(np.atleast_2d(np.asarray(student_logits, dtype=float))[0], temperature)
    x = np.arange(len(teacher))
    ax.bar(x - 0.2, teacher, width=0.4, color=TEACHER, label="teacher")
    ax.bar(x + 0.2, student, width=0.4, color=STUDENT, hatch="//", edgecolor="white", label="student")
    ax.set_xticks(x, list(class_names) if class_names is not None else [str(i) for i in x])
    ax.set(xlabel="class", ylabel=f"softmax(logits / T), T = {temperature:g}", ylim=(0, 1.05),
           title="Softened distributions")
    ax.legend(loc="upper right")


def plot_loss_components(ax: Axes, xs: Sequence[float], components: Mapping[str, Sequence[float]],
                         current: float | None = None, xlabel: str = "temperature T") -> None:
    """Distill, student and total loss against T (or alpha); a dotted line marks the current value."""
    for key, label, color, linestyle, marker in COMPONENTS:
        if key in components:
            ax.plot(xs, components[key], color=color, ls=linestyle, marker=marker, markevery=max(len(xs) // 8, 1),
                    label=label, lw=2 if key == "total" else 1.5)
    if current is not None:
        ax.axvline(current, color="grey", ls=":", label=f"current = {current:g}")
    ax.set(xlabel=xlabel, ylabel="loss", title=f"Loss components vs {xlabel.split()[0]}")
    ax.legend(loc="best", fontsize="small")


def plot_step_losses(ax: Axes, steps: Sequence[Mapping], label: str = "", linestyle: str = "-") -> None:
    """Per-step total, distill and student loss of one run (``TrainingRun.steps``); call again to overlay.

    Rows with a ``step`` key are drawn at that step (the sweep keeps every 8th step, averaged over seeds);
    rows with an ``epoch`` key get grey lines at epoch ends. Colours name the components; a ``label`` adds a
    legend entry for this run's line style.
    """
    ax.set(xlabel="training step", ylabel="loss", title="Loss per step")
    if not steps:
        ax.text(0.5, 0.5, f"{label or 'this configuration'}: not trained yet", ha="center", va="center",
                transform=ax.transAxes)
        return
    x = np.array([s["step"] for s in steps]) if "step" in steps[0] else np.arange(1, len(steps) + 1)
    shown = set(ax.get_legend_handles_labels()[1])
    for key, name, color, _, marker in COMPONENTS:  # the run's line style; the components differ by marker
        ax.plot(x, [s[f"{key}_loss"] for s in steps], color=color, ls=linestyle, lw=1.2, marker=marker, ms=4,
                markevery=max(len(x) // 10, 1), label=None if name in shown else name)
    if label:
        ax.plot([], [], color="grey", ls=linestyle, label=label)
    epochs = [s.get("epoch", 1) for s in steps]
    for i in range(1, len(epochs)):
        if epochs[i] != epochs[i - 1]:
            ax.axvline(i + 0.5, color="lightgrey", lw=1)
            ax.set_xlabel("training step (grey lines: epoch ends)")
    ax.legend(loc="upper right", fontsize="small")


def plot_accuracy_curves(ax: Axes, history: Sequence[Mapping], teacher_accuracy: float | None = None,
                         baseline_accuracy: float | Sequence[Mapping] | None = None, label: str = "student",
                         linestyle: str = "-", color: str = STUDENT, legend_loc: str = "lower right") -> None:
    """Validation accuracy per epoch (or per evaluation ``step``), with a ±1 sd band where the history has
    ``accuracy_sd`` (a mean over seeds); the teacher and the CE-only baseline (a number or a history).
    ``legend_loc="best"`` lets matplotlib keep the legend off the curves (slower: the widget's choice)."""
    if history:
        _curve(ax, history, dict(marker="o", ls=linestyle, color=color, label=label))
    if teacher_accuracy is not None:
        ax.axhline(teacher_accuracy, color=TEACHER, ls="--", label=f"teacher {teacher_accuracy:.1%}")
    if isinstance(baseline_accuracy, (int, float)):
        ax.axhline(baseline_accuracy, color=BASELINE, ls="-.", label=f"CE-only {baseline_accuracy:.1%}")
    elif baseline_accuracy:
        _curve(ax, baseline_accuracy, dict(color=BASELINE, ls="-.", marker="s", label="CE-only (alpha = 0)"))
    curves = [history] + ([] if isinstance(baseline_accuracy, (int, float)) else [baseline_accuracy or []])
    by_step = any("step" in h for curve in curves for h in curve)
    if not by_step:
        shown = [h["epoch"] for curve in curves for h in curve]
        last = int(max(shown + [ax.get_xlim()[1]])) if shown else 0
        if 0 < last <= 12:  # whole epochs only, even for a one-epoch run
            ax.set_xticks(range(1, last + 1))
    band = any("accuracy_sd" in h for curve in curves for h in curve)
    ax.set(xlabel="training step" if by_step else "epoch",
           ylabel="validation accuracy" + (" (mean ± 1 sd over seeds)" if band else ""),
           title="Validation accuracy")
    ax.legend(loc=legend_loc, fontsize="small")


def _curve(ax: Axes, history: Sequence[Mapping], style: dict) -> None:
    x = np.array([h["step"] if "step" in h else h["epoch"] for h in history])
    y = np.array([h["accuracy"] for h in history])
    ax.plot(x, y, ms=4, **style)
    if all("accuracy_sd" in h for h in history):
        sd = np.array([h["accuracy_sd"] for h in history])
        ax.fill_between(x, y - sd, y + sd, color=style.get("color"), alpha=0.15, lw=0)


def plot_heatmap(ax: Axes, grid, temperatures: Sequence[float], alphas: Sequence[float],
                 highlight: tuple | list | None = None, title: str = "Final accuracy",
                 reference: float | None = None, min_span: float = 0.04, significant=None) -> None:
    """``grid[i][j]`` = accuracy at ``temperatures[i]``, ``alphas[j]`` (NaN: not run); boxes mark ``highlight``.

    With ``reference`` (e.g. the CE-only accuracy) the colours are centred on it: teal above, brown below, white
    equal. The colour scale always spans at least ``min_span`` (4 points), so that differences within the noise
    of a few hundred validation rows do not look like contrasts. ``significant`` (a boolean grid) adds a ``*``
    to cells whose difference from the reference is beyond the noise.
    """
    grid = np.asarray(grid, dtype=float)
    finite = grid[np.isfinite(grid)]
    if reference is not None:
        half = max(float(np.abs(finite - reference).max()) if finite.size else 0.0, min_span / 2)
        vmin, vmax, cmap = reference - half, reference + half, "BrBG"
    else:
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        pad = max(0.0, min_span - (high - low)) / 2
        vmin, vmax, cmap = low - pad, high + pad, "viridis"
    image = ax.imshow(grid, cmap=cmap, origin="lower", aspect="auto", vmin=vmin, vmax=vmax)
    for (i, j), value in np.ndenumerate(grid):
        shade = float(image.norm(value)) if np.isfinite(value) else 0.5
        dark = abs(shade - 0.5) > 0.3 if reference is not None else shade < 0.5  # where black text is hard to read
        star = "*" if significant is not None and np.asarray(significant)[i, j] else ""
        ax.text(j, i, "–" if np.isnan(value) else f"{value:.1%}{star}", ha="center", va="center", fontsize="small",
                color="grey" if np.isnan(value) else "white" if dark else "black")
    marks = [highlight] if isinstance(highlight, tuple) else list(highlight or [])
    for (temperature, alpha), color, style in zip(marks, (PALETTE["vermillion"], PALETTE["purple"]), ("-", "--"),
                                                  strict=False):
        if temperature in temperatures and alpha in alphas:
            i, j = list(temperatures).index(temperature), list(alphas).index(alpha)
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec=color, ls=style, lw=3))
    ax.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas])
    ax.set_yticks(range(len(temperatures)), [f"{t:g}" for t in temperatures])
    ax.set(xlabel="alpha (weight of the KL term; 0 = CE only)", ylabel="temperature T", title=title)


def plot_reliability(ax: Axes, bins: Mapping, label: str = "model") -> None:
    """Reliability diagram from ``metrics.reliability_bins``: accuracy per confidence bin vs the diagonal.

    The legend sits below the axes, so that it never hides a bar.
    """
    edges = np.asarray(bins["edges"])
    filled = np.asarray(bins["count"]) > 0
    centers, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    ax.bar(centers[filled], np.asarray(bins["accuracy"])[filled], width=width[filled], color=PALETTE["sky"],
           edgecolor=PALETTE["black"], label=f"{label}: accuracy per bin")
    ax.plot(np.asarray(bins["confidence"])[filled], np.asarray(bins["accuracy"])[filled], "o", color=PALETTE["black"],
            ms=3, label="per bin: (mean confidence, accuracy)")
    ax.plot([0, 1], [0, 1], ls="--", color=PALETTE["vermillion"], label="perfectly calibrated")
    ax.set(xlabel="confidence (max probability)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.02),
           title="Reliability diagram")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), fontsize="small", ncol=1, frameon=False)


def plot_confusion(ax: Axes, matrix, class_names: Sequence[str] = ("negative", "positive"),
                   title: str = "Confusion matrix") -> None:
    """Counts of (true, predicted) pairs, annotated in each cell."""
    matrix = np.asarray(matrix)
    ax.imshow(matrix, cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center",
                color="white" if value > matrix.max() / 2 else "black")
    ticks = range(len(matrix))
    ax.set_xticks(ticks, list(class_names)[: len(matrix)])
    ax.set_yticks(ticks, list(class_names)[: len(matrix)])
    ax.set(xlabel="predicted", ylabel="true", title=title)


def plot_accuracy_vs_latency(ax: Axes, models: Mapping[str, Mapping]) -> None:
    """One marker per model (``metrics.metrics_table`` output): latency vs accuracy, area ~ size in MB.

    Each model has its own colour *and* marker, named in the legend below the axes (labels beside the points
    overprinted each other where models have similar latency and accuracy).
    """
    for (name, report), style in zip(models.items(), _cycle(), strict=False):
        ax.scatter(report["latency_ms_batch1"], report["accuracy"], s=40 + 3 * report["size_mb"],
                   color=style["color"], marker=style["marker"], alpha=0.8, edgecolor=PALETTE["black"],
                   label=f"{name} ({report['size_mb']:.0f} MB)")
    ax.margins(x=0.1, y=0.1)
    ax.set(xlabel="CPU latency, batch 1 (ms)", ylabel="validation accuracy",
           title="Accuracy vs latency (marker area ~ size)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize="small", markerscale=0.6, ncol=2,
              frameon=False)


# notebook 05's loss terms beyond the logit loss: (key, legend name, colour, marker)
FEATURE_COMPONENTS = (("hidden", "hidden MSE", PALETTE["orange"], "D"),
                      ("cosine", "hidden cosine", PALETTE["sky"], "P"),
                      ("attention", "attention KL", PALETTE["blue"], "v"))


def plot_feature_steps(ax: Axes, steps: Sequence[Mapping], label: str = "", linestyle: str = "-") -> None:
    """Per-step loss components of a notebook-05 run: total, distill, student and every feature loss it used
    (a component that stayed 0 is left out); call again to overlay another run with another line style."""
    ax.set(xlabel="training step", ylabel="loss (log scale)", title="Loss components per step", yscale="log")
    if not steps:
        ax.text(0.5, 0.5, f"{label or 'this configuration'}: not trained yet", ha="center", va="center",
                transform=ax.transAxes)
        return
    x = np.array([s["step"] for s in steps])
    shown = set(ax.get_legend_handles_labels()[1])
    rows = [(k, n, c, m) for k, n, c, _, m in COMPONENTS] + list(FEATURE_COMPONENTS)
    for key, name, color, marker in rows:
        y = np.array([s.get(f"{key}_loss", 0.0) for s in steps])
        if not (y > 0).any():
            continue
        ax.plot(x, y, color=color, ls=linestyle, lw=1.2, marker=marker, ms=4, markevery=max(len(x) // 10, 1),
                label=None if name in shown else name)
    if label:
        ax.plot([], [], color="grey", ls=linestyle, label=label)
    ax.legend(loc="upper right", fontsize="small", ncol=2)


def plot_layer_map(ax: Axes, pairs: Sequence[tuple[int, int]], student_layers: int, teacher_layers: int) -> None:
    """Teacher layers on the left, student layers on the right (0 = embeddings), an arrow per mapped pair."""
    for x, n, name, color in ((0, teacher_layers, "teacher", TEACHER), (1, student_layers, "student", STUDENT)):
        for layer in range(n + 1):
            y = layer / max(teacher_layers, 1)
            ax.add_patch(Rectangle((x - 0.18, y - 0.04), 0.36, 0.08, facecolor=color, alpha=0.25, edgecolor=color))
            ax.text(x, y, "embeddings" if layer == 0 else f"layer {layer}", ha="center", va="center",
                    fontsize="small")
        ax.text(x, 1.12, f"{name} ({n} layer{'s' if n > 1 else ''})", ha="center", fontweight="bold")
    for student, teacher in pairs:
        ax.annotate("", xy=(0.8, student / max(teacher_layers, 1)), xytext=(0.2, teacher / max(teacher_layers, 1)),
                    arrowprops=dict(arrowstyle="->", color=PALETTE["black"], lw=1.5))
    ax.set(xlim=(-0.3, 1.3), ylim=(-0.12, 1.2), title="Layer map: who learns from whom")
    ax.axis("off")


def plot_attention(ax: Axes, attention, tokens: Sequence[str], title: str = "Attention (mean over heads)") -> None:
    """One sentence's attention map ``(queries, keys)``: row i says where token i looks (each row sums to 1)."""
    matrix = np.asarray(attention, dtype=float)
    image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=max(matrix.max(), 1e-9))
    ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize="small")
    ax.set_yticks(range(len(tokens)), tokens, fontsize="small")
    ax.set(xlabel="key (looked at)", ylabel="query (looking)", title=title)
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)


def plot_layer_probe(ax: Axes, accuracies: Sequence[float], chance: float = 0.5) -> None:
    """Linear-probe accuracy per layer (0 = embeddings): where the sentiment becomes readable."""
    ax.plot(range(len(accuracies)), accuracies, color=TEACHER, marker="o", ls="-", label="teacher, linear probe")
    ax.axhline(chance, color=PALETTE["grey"], ls=":", label="chance")
    ax.set_xticks(range(len(accuracies)), ["emb"] + [str(i) for i in range(1, len(accuracies))])
    ax.set(xlabel="layer", ylabel="validation accuracy", title="What each layer carries about sentiment")
    ax.legend(loc="lower right", fontsize="small")


def _cycle():
    while True:
        yield from SERIES
