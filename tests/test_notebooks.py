"""The notebooks' shape, checked without running them (nbval runs them: `make test`, `make nbtest`).

Every notebook, solutions included: executed top to bottom with no error output, cleaned metadata, a settings
cell that reads KD_FAST and prints the environment, at least three nbval-checked cells that print only
deterministic text, explicit imports, and no copy of the package's code.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
import statistics
from pathlib import Path

import nbformat
import pytest

import kd_helpers

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
MAIN = sorted(NOTEBOOKS.glob("[0-9]*.ipynb"))
SOLUTIONS = sorted((NOTEBOOKS / "solutions").glob("[0-9]*.ipynb"))
ALL = MAIN + SOLUTIONS
MAIN_HEADINGS = ("What you will learn", "Prerequisites", "Runtime", "Settings", "Summary", "Exercises")
SOLUTION_HEADINGS = ("Runtime", "Settings", "Exercise 1")
# calls whose printed results are training metrics or timings: never in a checked cell
TRAINING_CALLS = ("prepare(", "train_student(", "distill(", "train_epoch(", "run_sweep(", "metrics_table(",
                  "compare_methods(", "train_method(", "prepare_transfer(", "evaluate_model(", "perf_counter(")


def _id(path: Path) -> str:
    return str(path.relative_to(NOTEBOOKS))


def _read(path: Path):
    return nbformat.read(path, as_version=4)


def _code(nb) -> list:
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def _headings(nb) -> list[str]:
    return [line.lstrip("#").strip() for cell in nb.cells if cell.cell_type == "markdown"
            for line in cell.source.splitlines() if line.startswith("#")]


def _is_install_cell(cell) -> bool:
    """The main notebooks' first code cell: installs kd_helpers on Colab / a fresh machine (tests/test_classroom.py)."""
    return cell.cell_type == "code" and 'find_spec("kd_helpers")' in cell.source


def _settings(nb):
    return next(cell for cell in _code(nb) if not _is_install_cell(cell))


def _checked(nb) -> list:
    return [cell for cell in _code(nb) if "# NBVAL_CHECK_OUTPUT" in cell.source]


def test_the_series_is_complete():
    assert [p.name for p in MAIN] == ["01_distillation_loss.ipynb", "02_teacher_student_loop.ipynb",
                                      "03_evaluation.ipynb", "04_temperature_alpha_explorer.ipynb",
                                      "05_beyond_logits.ipynb"]
    assert [p.name.replace("_solutions", "") for p in SOLUTIONS] == [p.name for p in MAIN]


@pytest.mark.parametrize("path", MAIN, ids=_id)
def test_main_notebooks_follow_the_template(path):
    nb = _read(path)
    headings = _headings(nb)
    assert headings[0].startswith(path.name[:2]), "the title names the notebook's number"
    for required in MAIN_HEADINGS:
        assert any(h == required or h.startswith(required) for h in headings), f"missing heading {required!r}"
    order = [next(i for i, h in enumerate(headings) if h.startswith(name)) for name in MAIN_HEADINGS]
    assert order == sorted(order), f"headings out of order: {MAIN_HEADINGS}"
    solutions_link = f"solutions/{path.stem}_solutions.ipynb"
    assert any(solutions_link in cell.source for cell in nb.cells if cell.cell_type == "markdown")


@pytest.mark.parametrize("path", SOLUTIONS, ids=_id)
def test_solution_notebooks_answer_every_exercise(path):
    nb = _read(path)
    headings = _headings(nb)
    for required in SOLUTION_HEADINGS:
        assert any(h.startswith(required) for h in headings), f"missing heading {required!r}"
    main = _read(NOTEBOOKS / path.name.replace("_solutions", ""))
    exercises = next(cell.source for cell in main.cells
                     if cell.cell_type == "markdown" and "## Exercises" in cell.source)
    count = len(re.findall(r"^\d+\. \*\*", exercises.split("## Exercises")[1], flags=re.M))
    assert count >= 3
    for n in range(1, count + 1):
        assert any(h.startswith(f"Exercise {n}:") for h in headings), f"no solution to exercise {n}"


@pytest.mark.parametrize("path", ALL, ids=_id)
def test_runtime_is_stated(path):
    runtime = next(cell.source for cell in _read(path).cells
                   if cell.cell_type == "markdown" and "## Runtime" in cell.source)
    text = runtime.split("## Runtime")[1].lower()
    assert "RUNTIME_" not in text, "runtime placeholder not filled in"
    assert "fast" in text and "full" in text, "state both the fast-mode and the full-mode runtime"


@pytest.mark.parametrize("path", ALL, ids=_id)
def test_settings_cell_reads_kd_fast_and_prints_the_environment(path):
    first = _settings(_read(path))
    assert "# NBVAL_IGNORE_OUTPUT" in first.source
    assert "KDConfig.from_env(" in first.source, "the settings cell reads KD_FAST through KDConfig.from_env"
    assert "print_environment(config)" in first.source
    assert "mode " in "".join(o.get("text", "") for o in first.outputs), "versions, device and mode are printed"


@pytest.mark.parametrize("path", ALL, ids=_id)
def test_at_least_three_checked_cells_with_deterministic_text(path):
    checked = _checked(_read(path))
    assert len(checked) >= 3, "nbval-lax compares only cells marked # NBVAL_CHECK_OUTPUT"
    for cell in checked:
        assert "# NBVAL_IGNORE_OUTPUT" not in cell.source
        assert not any(call in cell.source for call in TRAINING_CALLS), \
            f"a checked cell must not print training results or timings:\n{cell.source}"
        assert cell.outputs, f"a checked cell without committed output checks nothing:\n{cell.source}"
        for output in cell.outputs:
            assert output.output_type == "stream" and output.name == "stdout", \
                f"checked cells print to stdout only (no warnings, figures or rich output):\n{cell.source}"
            assert not re.search(r"\d+%\|", output.text), "no progress bars in checked cells"
            assert "/work/" not in output.text and "/home/" not in output.text, "no machine paths in checked output"


@pytest.mark.parametrize("path", ALL, ids=_id)
def test_committed_outputs_are_clean_and_complete(path):
    nb = _read(path)
    assert set(nb.metadata) <= {"kernelspec", "language_info"}, "no widget state or other volatile metadata"
    assert nb.metadata.kernelspec.name == "python3"
    counts = []
    for cell in _code(nb):
        assert "execution" not in cell.metadata, "no execution timestamps"
        if _is_install_cell(cell) and cell.execution_count is None and not cell.outputs:
            continue  # the install cell may be committed unexecuted (it does nothing where kd_helpers is installed)
        assert cell.execution_count is not None, f"cell not executed:\n{cell.source}"
        counts.append(cell.execution_count)
        for output in cell.outputs:
            assert output.output_type != "error", f"error output in:\n{cell.source}"
    assert counts == list(range(1, len(counts) + 1)), "executed once, top to bottom, in a fresh kernel"
    assert sum(len(cell.outputs) for cell in _code(nb)) >= len(_code(nb)) // 2, "outputs are committed"


def _kd_helpers_modules() -> set[str]:
    return {name for _, name, _ in pkgutil.iter_modules(kd_helpers.__path__) if not name.startswith("_")}


@pytest.mark.parametrize("path", ALL, ids=_id)
def test_imports_are_explicit(path):
    modules = _kd_helpers_modules()
    for cell in _code(_read(path)):
        tree = ast.parse(cell.source)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert all(alias.name != "*" for alias in node.names), "no `import *`"
                if node.module == "kd_helpers":  # only modules: `from kd_helpers import experiment`
                    names = [alias.name for alias in node.names]
                    assert set(names) <= modules, f"import names from their module, e.g. kd_helpers.loss: {names}"
            if isinstance(node, ast.Import):
                assert all(alias.name != "kd_helpers" for alias in node.names), "import what you use, explicitly"


@pytest.mark.parametrize("path", ALL, ids=_id)
def test_no_copy_of_the_package_code(path):
    """Notebooks show the package's source with show_source; they never redefine its functions or classes."""
    public = set()
    for name in _kd_helpers_modules():
        module = importlib.import_module(f"kd_helpers.{name}")
        public |= {n for n, obj in vars(module).items() if not n.startswith("_")
                   and (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__ == module.__name__}
    for cell in _code(_read(path)):
        for node in ast.walk(ast.parse(cell.source)):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                assert node.name not in public, f"{node.name} is defined in kd_helpers: import it instead"


@pytest.mark.parametrize("path", ALL, ids=_id)
def test_cells_are_small_and_figures_are_shown(path):
    cells = _code(_read(path))
    lengths = [len(cell.source.splitlines()) for cell in cells]
    assert statistics.median(lengths) <= 10, "keep code cells small"
    for cell in cells:
        if "plt.subplots(" in cell.source:
            assert "plt.show()" in cell.source, f"show figures with plt.show():\n{cell.source}"


@pytest.mark.parametrize("path", MAIN, ids=_id)
def test_fast_mode_proves_something(path):
    """A hollow fast mode must not pass: each main notebook asserts a real property of what it ran."""
    asserts = [cell for cell in _code(_read(path)) if re.search(r"^\s*assert ", cell.source, flags=re.M)]
    assert asserts, "assert something real (the loss fell, the teacher is unchanged, ...)"


@pytest.mark.parametrize("path", ALL, ids=_id)
def test_alpha_convention_is_stated_where_alpha_is_set(path):
    for cell in _code(_read(path)):
        if re.search(r"^\s*alpha\s*=|alpha=\d", cell.source, flags=re.M) and "KDConfig.from_env(" in cell.source:
            assert "KL" in cell.source and "HF" in cell.source, "say which term alpha weights, and that HF/Keras differ"


def test_readme_lists_every_notebook_with_runtimes():
    readme = (NOTEBOOKS / "README.md").read_text(encoding="utf-8")
    for path in MAIN:
        assert path.name in readme
    assert "KD_FAST" in readme and "fast" in readme and "full" in readme
    teaching = (NOTEBOOKS / "TEACHING.md").read_text(encoding="utf-8")
    for topic in ("alpha", "T²", "batchmean", "student before"):
        assert topic.lower() in teaching.lower(), f"TEACHING.md should address {topic!r}"


# --- kd_helpers.notebook: the three helpers every notebook uses -----------------------------------------------


def test_cmp_reports_exact_approximate_and_maxdiff(capsys):
    import torch

    from kd_helpers.notebook import cmp

    assert cmp("same", torch.tensor([1.0, 2.0]), [1.0, 2.0])
    assert cmp("close", torch.tensor([1.0], dtype=torch.float64), torch.tensor([1.0 + 1e-8], dtype=torch.float64))
    assert not cmp("far", torch.tensor([1.0]), torch.tensor([1.1]))
    lines = capsys.readouterr().out.splitlines()
    assert "exact: True" in lines[0] and "maxdiff: 0.0e+00" in lines[0]
    assert "exact: False" in lines[1] and "approximate: True" in lines[1]
    assert "approximate: False" in lines[2] and "maxdiff: 1.0e-01" in lines[2]
    with pytest.raises(ValueError, match="shapes differ"):
        cmp("shapes", torch.zeros(2), torch.zeros(3))


def test_show_source_displays_the_real_source(monkeypatch):
    import IPython.display

    from kd_helpers.loss import DistillationLoss
    from kd_helpers.notebook import show_source

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda obj: shown.append(obj))
    show_source(DistillationLoss)
    header, listing = shown
    assert "kd_helpers/loss.py" in header.data
    assert listing.data == inspect.getsource(DistillationLoss)
    shown.clear()
    show_source(DistillationLoss, start="def forward", end="return total")
    listing = shown[1].data.strip()
    assert listing.startswith("def forward") and listing.endswith("return total, distill, student")


def test_print_environment_names_the_mode(capsys):
    from kd_helpers.config import KDConfig
    from kd_helpers.notebook import print_environment

    print_environment(KDConfig(fast=True))
    out = capsys.readouterr().out
    assert "torch" in out and "transformers" in out and "device" in out and "mode          fast" in out


SHOWN = re.compile(r"`(kd_helpers/[\w/]+\.py)`, lines (\d+)–(\d+):")


@pytest.mark.parametrize("path", ALL, ids=_id)
def test_shown_source_matches_the_package(path):
    """Every committed ``show_source`` listing is the package's current code at the lines its header names."""
    root = NOTEBOOKS.parent
    for cell in _read(path).cells:
        outputs = [o for o in cell.get("outputs", []) if o.get("output_type") == "display_data"]
        for header, listing in zip(outputs, outputs[1:], strict=False):
            match = SHOWN.fullmatch(header.get("data", {}).get("text/markdown", "").strip())
            if not match:
                continue
            name, first, last = match.group(1), int(match.group(2)), int(match.group(3))
            lines = (root / name).read_text().splitlines()[first - 1:last]
            assert listing["data"]["text/plain"].rstrip("\n") == "\n".join(lines), (
                f"{_id(path)}: the listing of {name}, lines {first}-{last}, is stale: re-run the notebook")
