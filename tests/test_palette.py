"""Readable figures: every plotting helper draws in the Okabe–Ito palette (or neutral greys), no two labelled series
of one axes differ by colour alone, and the widgets render at projector size."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib import colors as mcolors  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from kd_helpers import plots  # noqa: E402

NEUTRAL = {mcolors.to_hex(c) for c in ("black", "white", "grey", "lightgrey", plots.PALETTE["grey"])}
ALLOWED = {mcolors.to_hex(c) for c in plots.PALETTE.values()} | NEUTRAL

STEPS = [{"total_loss": 1.0 - i / 50, "distill_loss": 0.8 - i / 60, "student_loss": 0.7 - i / 70, "epoch": 1 + i // 25}
         for i in range(50)]
HISTORY = [{"epoch": e, "accuracy": 0.6 + 0.05 * e, "accuracy_sd": 0.01} for e in (1, 2, 3)]
MODELS = {name: {"latency_ms_batch1": lat, "accuracy": acc, "size_mb": mb}
          for name, lat, acc, mb in (("teacher", 5.5, 0.86, 91), ("student_before", 1.1, 0.5, 16),
                                     ("student_kd", 1.1, 0.78, 16), ("student_ce", 1.2, 0.75, 16),
                                     ("student_kd_int8", 0.9, 0.78, 10))}
BINS = {"edges": np.linspace(0, 1, 16).tolist(), "count": [0] * 7 + [5] * 8,
        "accuracy": [0.0] * 7 + list(np.linspace(0.3, 0.9, 8)),
        "confidence": [0.0] * 7 + list(np.linspace(0.5, 0.97, 8))}

DRAWINGS = {
    "soft_targets": lambda ax: plots.plot_soft_targets(ax, [0.0, 2.0, 1.0], [0.5, 0.5, 0.0], 4.0),
    "loss_components": lambda ax: plots.plot_loss_components(
        ax, [1, 2, 4, 8], {"total": [1, 2, 3, 4], "distill": [1, 1, 2, 2], "student": [3, 3, 3, 3]}, current=4),
    "step_losses, two runs": lambda ax: (plots.plot_step_losses(ax, STEPS, label="run A"),
                                         plots.plot_step_losses(ax, STEPS, label="run B", linestyle="--")),
    "accuracy_curves": lambda ax: plots.plot_accuracy_curves(ax, HISTORY, teacher_accuracy=0.86,
                                                             baseline_accuracy=HISTORY),
    "heatmap": lambda ax: plots.plot_heatmap(ax, [[0.7, 0.8], [0.75, np.nan]], [1.0, 4.0], [0.5, 0.9],
                                             highlight=[(1.0, 0.5), (4.0, 0.5)], reference=0.72),
    "reliability": lambda ax: plots.plot_reliability(ax, BINS),
    "accuracy_vs_latency": lambda ax: plots.plot_accuracy_vs_latency(ax, MODELS),
}


def _artist_colours(ax) -> set:
    found = set()
    for line in ax.get_lines():
        found.add(mcolors.to_hex(line.get_color()))
    for patch in ax.patches:
        for colour in (patch.get_facecolor(), patch.get_edgecolor()):
            if colour[3] > 0:
                found.add(mcolors.to_hex(colour[:3]))
    for collection in ax.collections:
        if collection.get_array() is None:  # scatter / fill_between, not a colormapped image
            found |= {mcolors.to_hex(c[:3]) for c in collection.get_facecolor()}
    return found


@pytest.mark.parametrize("name", DRAWINGS)
def test_every_helper_draws_in_the_palette(name):
    fig = Figure()
    ax = fig.add_subplot()
    DRAWINGS[name](ax)
    outside = _artist_colours(ax) - ALLOWED
    assert not outside, f"{name}: colours outside the Okabe–Ito palette: {sorted(outside)}"


@pytest.mark.parametrize("name", DRAWINGS)
def test_no_two_labelled_series_differ_by_colour_alone(name):
    fig = Figure()
    ax = fig.add_subplot()
    DRAWINGS[name](ax)
    handles, labels = ax.get_legend_handles_labels()
    styles = {}
    for handle, label in zip(handles, labels, strict=True):
        if isinstance(handle, Line2D):
            style = (handle.get_linestyle(), handle.get_marker())
        elif hasattr(handle, "get_paths"):  # scatter: the marker shape
            style = ("scatter", tuple(map(tuple, handle.get_paths()[0].vertices.round(3))))
        else:  # bars: the hatch
            style = ("bar", handle.get_hatch() if hasattr(handle, "get_hatch") else None,
                     getattr(handle.patches[0], "get_hatch", lambda: None)() if hasattr(handle, "patches") else None)
        styles.setdefault(style, []).append(label)
    shared = {style: names for style, names in styles.items() if len(names) > 1}
    assert not shared, f"{name}: series told apart by colour alone: {shared}"


def test_helpers_have_no_hard_coded_default_colours():
    import inspect

    source = inspect.getsource(plots)
    assert "tab:" not in source and "magenta" not in source and '"red"' not in source


def test_widgets_render_at_projector_size():
    from kd_helpers.widgets import LossExplorer

    explorer = LossExplorer()
    explorer.update()
    assert explorer.fig.dpi >= 100
    sizes = [text.get_fontsize() for ax in explorer.fig.axes for text in (ax.title, ax.xaxis.label, ax.yaxis.label)]
    assert min(sizes) >= plots.FONT_SIZE - 1, sizes
