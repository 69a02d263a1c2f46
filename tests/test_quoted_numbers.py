"""Text that matches the outputs: every result a notebook's markdown quotes (a number with one or more decimals
followed by %, "points" or ±) appears in that notebook's committed outputs, unless the cell names the command
that printed it (``Source: `python ...` ``)."""

import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("0*.ipynb")) + sorted((ROOT / "notebooks" / "solutions").glob("*.ipynb"))
QUOTED = re.compile(r"(?<![\w.])(\d+\.\d+)\s?(?:%|points|±)")


def printed_numbers(nb) -> set[str]:
    """Every decimal number in the code cells' outputs, and fractions also as percentages (0.8139 -> 81.4)."""
    texts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            texts.append(output.get("text", ""))
            texts += [v for k, v in output.get("data", {}).items() if k.startswith("text/") and isinstance(v, str)]
    text = "\n".join(texts)
    numbers = set(re.findall(r"\d+\.\d+", text))
    numbers |= {f"{100 * float(f):.1f}" for f in re.findall(r"(?<![\d.])0\.\d{3,}", text)}
    return numbers


def quoted_numbers(nb) -> list[str]:
    found = []
    for cell in nb.cells:
        if cell.cell_type == "markdown" and "Source: `" not in cell.source:
            found += [m.group(1) for m in QUOTED.finditer(cell.source)]
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_quoted_results_are_in_the_outputs(path):
    nb = nbformat.read(path, as_version=4)
    missing = [number for number in quoted_numbers(nb) if number not in printed_numbers(nb)]
    assert not missing, f"{path.name}: the text quotes {missing}, which no output of the notebook prints"


def test_the_check_can_fail():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("KD reached 91.3 % (± 0.4 points)."),
                                         nbformat.v4.new_code_cell("print(0.913)")])
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="0.913\n")]
    assert quoted_numbers(nb) == ["91.3", "0.4"]
    assert [n for n in quoted_numbers(nb) if n not in printed_numbers(nb)] == ["0.4"]
