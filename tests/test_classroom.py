"""The classroom kit: RISE / reveal.js slides of the main notebooks, their install cell, the Binder set-up.

The slides are built in memory with nbconvert's ``SlidesExporter`` (what ``make slides`` runs); nothing here
executes a notebook or needs the network.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
MAIN = sorted(NOTEBOOKS.glob("[0-9]*.ipynb"))
SLIDE_TYPES = {"slide", "subslide", "fragment", "-", "skip", "notes"}
MIN_SLIDES = 8


def _read(path: Path):
    return nbformat.read(path, as_version=4)


def _slide_type(cell) -> str | None:
    return cell.metadata.get("slideshow", {}).get("slide_type")


def _install_cell(nb):
    return nb.cells[1]


class _Sections(HTMLParser):
    """Counts reveal.js's <section> elements by depth: top level = slides, one level down = their subslides."""

    def __init__(self):
        super().__init__()
        self.depth, self.top, self.nested = 0, 0, 0
        self.first_slide_text = []

    def handle_starttag(self, tag, attrs):
        if tag == "section":
            self.depth += 1
            self.top += self.depth == 1
            self.nested += self.depth == 2

    def handle_endtag(self, tag):
        if tag == "section":
            self.depth -= 1

    def handle_data(self, data):
        if self.top == 1 and self.depth:
            self.first_slide_text.append(data)


@functools.cache
def _slides_html(path: Path) -> str:
    from nbconvert import SlidesExporter

    html, _ = SlidesExporter().from_notebook_node(_read(path))
    return html


def _sections(html: str) -> _Sections:
    parser = _Sections()
    parser.feed(html[html.index('<div class="slides">'):])
    assert parser.depth == 0, "unbalanced <section> tags"
    return parser


def _id(path: Path) -> str:
    return path.name


def test_there_are_main_notebooks():
    assert len(MAIN) >= 4


@pytest.mark.parametrize("path", MAIN, ids=_id)
def test_slide_metadata(path):
    """Every cell says how it is presented; every heading cell starts a slide; the title is the first slide."""
    nb = _read(path)
    kinds = [_slide_type(cell) for cell in nb.cells]
    assert set(kinds) <= SLIDE_TYPES, f"cells without (or with an unknown) slide_type: {set(kinds) - SLIDE_TYPES}"
    assert kinds[0] == "slide", "the title cell is the first slide"
    for cell, kind in zip(nb.cells, kinds, strict=True):
        if cell.cell_type == "markdown" and re.search(r"^##? ", cell.source, flags=re.M):
            assert kind == "slide", f"a cell with a section heading starts a slide:\n{cell.source[:200]}"
        if cell.cell_type == "code" and any("image/png" in o.get("data", {}) for o in cell.outputs):
            assert kind != "skip", f"a teaching figure is skipped:\n{cell.source[:200]}"
    assert kinds.count("slide") >= MIN_SLIDES


@pytest.mark.parametrize("path", MAIN, ids=_id)
def test_slides_build_with_one_section_per_slide(path):
    """nbconvert's reveal.js output: one top-level <section> per "slide" cell, holding one nested <section> per
    subslide (the slide's own first part included), and no skipped cell."""
    nb = _read(path)
    kinds = [_slide_type(cell) for cell in nb.cells]
    html = _slides_html(path)
    sections = _sections(html)
    assert sections.top == kinds.count("slide") >= MIN_SLIDES
    assert sections.nested == kinds.count("slide") + kinds.count("subslide")
    title = nb.cells[0].source.splitlines()[0].removeprefix("# ")
    assert _slide_type(nb.cells[0]) == "slide" and title in "".join(sections.first_slide_text), \
        "the title cell is the first slide"
    assert 'find_spec("kd_helpers")' not in html and "find_spec(&quot;kd_helpers&quot;)" not in html, \
        "the install cell is skipped"


# --- the install cell: Colab or a fresh machine ---------------------------------------------------------------


@pytest.mark.parametrize("path", MAIN, ids=_id)
def test_install_cell_comes_first_and_is_skipped_in_slides(path):
    nb = _read(path)
    cell = _install_cell(nb)
    assert cell.cell_type == "code" and 'find_spec("kd_helpers")' in cell.source
    assert "# NBVAL_IGNORE_OUTPUT" in cell.source and _slide_type(cell) == "skip"
    assert [c for c in nb.cells if c.cell_type == "code"][0] is cell, "the first code cell"
    assert "## Settings" in nb.cells[2].source, "it sits between the title and the settings"
    assert _install_cell(_read(MAIN[0])).source == cell.source, "the same cell in every notebook"


@pytest.mark.parametrize("path", MAIN, ids=_id)
def test_install_cell_does_nothing_when_kd_helpers_is_installed(path, monkeypatch):
    def no_subprocess(*args, **kwargs):
        raise AssertionError(f"the install cell ran a subprocess: {args}")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = list(sys.path)
    namespace = {}
    exec(_install_cell(_read(path)).source, namespace)
    assert "root" not in namespace and sys.path == before


@pytest.mark.parametrize("path", MAIN, ids=_id)
def test_install_cell_installs_the_repository_when_kd_helpers_is_missing(path, monkeypatch):
    calls = []
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "kd_helpers" else find_spec(name, *args))
    monkeypatch.setattr(subprocess, "run", lambda command, **kwargs: calls.append((command, kwargs)))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(NOTEBOOKS)  # where Jupyter starts the kernel
    exec(_install_cell(_read(path)).source, {})
    assert calls == [([sys.executable, "-m", "pip", "install", "-q", "-e", str(ROOT)], {"check": True})]
    assert sys.path[0] == str(ROOT), "importable in the running kernel without a restart"


def test_install_cell_without_a_checkout_says_what_to_do(monkeypatch, tmp_path):
    if any((p / "pyproject.toml").exists() for p in (tmp_path, *tmp_path.parents)):
        pytest.skip("the temporary directory lies inside a project")
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "kd_helpers" else find_spec(name, *args))
    monkeypatch.setattr(subprocess, "run", lambda *args, **kwargs: pytest.fail("pip without a checkout"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="clone the repository"):
        exec(_install_cell(_read(MAIN[0])).source, {})


# --- Binder and make slides -------------------------------------------------------------------------------------


def test_binder_installs_what_make_setup_installs():
    post_build = ROOT / "binder" / "postBuild"
    assert os.access(post_build, os.X_OK), "binder/postBuild must be executable"
    script = post_build.read_text()
    assert script.startswith("#!")
    assert "pip install -c constraints.txt -r requirements.txt" in script
    assert "pip install --no-deps -e ." in script
    runtime = (ROOT / "binder" / "runtime.txt").read_text().strip()
    version = re.fullmatch(r"python-(3\.\d+)", runtime).group(1)
    makefile = (ROOT / "Makefile").read_text()
    assert version in re.search(r"^PY_SUPPORTED := (.*)$", makefile, re.M).group(1).split()


def test_make_slides_exports_the_main_notebooks():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^\.PHONY:.*\bslides\b", makefile, re.M)
    recipe = re.search(r"^slides:.*\n\t(.*)$", makefile, re.M).group(1)
    assert "nbconvert --to slides --output-dir slides" in recipe
    assert "notebooks/0[1-5]_*.ipynb" in recipe
    assert re.search(r"^/?slides/$", (ROOT / ".gitignore").read_text(), re.M)
    pins = (ROOT / "constraints.txt").read_text().lower().replace("_", "-").splitlines()
    assert "jupyterlab-rise==0.43.1" in pins
