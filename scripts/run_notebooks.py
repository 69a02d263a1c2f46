"""Re-execute the tutorial notebooks in place, in this Python environment, and clean what they store.

    KD_FAST=0 python scripts/run_notebooks.py        # `make notebooks`: the full-mode outputs that are committed
    KD_FAST=1 python scripts/run_notebooks.py 01 02  # a quick look at two notebooks (names filtered by substring)

The mode comes from ``KD_FAST`` (read by each notebook's settings cell). A notebook with an error output is
not written back, and the script exits with 1. Cleaning: no execution timestamps, no widget state (the explorers
show a static figure next to each widget), no progress bars, a fixed kernelspec and a minimal ``language_info``.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

import nbformat

from kd_helpers.config import fast_mode

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
# tqdm/datasets progress bars: text frames on stderr, or an ipywidgets HBox(HTML, FloatProgress, HTML) display
PROGRESS_TEXT = re.compile(r"\d+%\|")
PROGRESS_WIDGET = re.compile(r"FloatProgress|IntProgress|HBox\(children=\(HTML\(value=")


def notebook_paths(filters: list[str]) -> list[Path]:
    """The main notebooks in order, then their solutions; optionally only names containing a filter."""
    paths = sorted(NOTEBOOKS.glob("[0-9]*.ipynb")) + sorted((NOTEBOOKS / "solutions").glob("[0-9]*.ipynb"))
    if filters:
        paths = [p for p in paths if any(f in str(p.relative_to(NOTEBOOKS)) for f in filters)]
    return paths


def kernel_manager():
    """A kernel running *this* interpreter (like nbval's --nbval-current-env), whatever kernelspecs exist."""
    import ipykernel.kernelspec
    from jupyter_client import KernelManager
    from jupyter_client.kernelspec import KernelSpec, KernelSpecManager

    class CurrentEnv(KernelSpecManager):
        def get_kernel_spec(self, kernel_name):
            return KernelSpec(resource_dir=ipykernel.kernelspec.RESOURCES, **ipykernel.kernelspec.get_kernel_dict())

    return KernelManager(kernel_name="python3", kernel_spec_manager=CurrentEnv())


def execute(path: Path, timeout: int) -> tuple[nbformat.NotebookNode, str | None]:
    """Run every cell; return the notebook and the first error (None if it ran clean)."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, km=kernel_manager(), timeout=timeout, record_timing=True,
                            resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute(stderr=subprocess.DEVNULL)  # the kernel's own log lines; cell output arrives separately
    except CellExecutionError as exc:
        return nb, str(exc).strip().splitlines()[-1]
    errors = [o for cell in nb.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    return nb, f"{errors[0]['ename']}: {errors[0]['evalue']}" if errors else None


def slowest_cells(nb: nbformat.NotebookNode, count: int = 3) -> str:
    """The cells that took longest (from nbclient's timing metadata, removed again by ``clean``)."""
    from datetime import datetime

    found = []
    for index, cell in enumerate(nb.cells):
        timing = cell.metadata.get("execution", {})
        start, end = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
        if start and end:
            elapsed = datetime.fromisoformat(end.rstrip("Z")) - datetime.fromisoformat(start.rstrip("Z"))
            found.append((elapsed.total_seconds(), index))
    return ", ".join(f"cell {index}: {seconds:.0f} s" for seconds, index in sorted(found, reverse=True)[:count])


def clean(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Drop volatile metadata, widget state and progress bars; keep every other output."""
    nb.metadata = nbformat.NotebookNode({"kernelspec": KERNELSPEC, "language_info": {"name": "python"}})
    for cell in nb.cells:
        for key in ("execution", "collapsed", "scrolled", "widgets"):
            cell.metadata.pop(key, None)
        if cell.cell_type != "code":
            continue
        kept = []
        for output in cell.outputs:
            if _is_progress(output):
                continue
            output.get("metadata", {}).pop("application/vnd.jupyter.widget-view+json", None)
            kept.append(output)
        cell.outputs = _merge_streams(kept)
    return nb


def _merge_streams(outputs: list) -> list:
    """Consecutive prints to the same stream become one output (as a reader sees them)."""
    merged = []
    for output in outputs:
        last = merged[-1] if merged else None
        if (output.get("output_type") == "stream" and last is not None and last.get("output_type") == "stream"
                and last.get("name") == output.get("name")):
            last["text"] += output["text"]
        else:
            merged.append(output)
    return merged


def _is_progress(output) -> bool:
    if output.get("output_type") == "stream" and output.get("name") == "stderr":
        lines = [line for line in re.split(r"[\r\n]", output.get("text", "")) if line.strip()]
        return bool(lines) and all(PROGRESS_TEXT.search(line) for line in lines)
    data = output.get("data", {})
    text = data.get("text/plain", "")
    return "application/vnd.jupyter.widget-view+json" in data and bool(PROGRESS_WIDGET.search(text)
                                                                       or PROGRESS_TEXT.search(text))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("filters", nargs="*", help="only notebooks whose path contains one of these strings")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds allowed per cell")
    args = parser.parse_args(argv)
    paths = notebook_paths(args.filters)
    if not paths:
        print("error: no notebook matches", file=sys.stderr)
        return 2
    mode = "fast" if fast_mode() else "full"
    print(f"Executing {len(paths)} notebook(s) in {mode} mode with {sys.executable}")
    timings, failed = [], []
    for path in paths:
        name = str(path.relative_to(NOTEBOOKS))
        start = time.perf_counter()
        nb, error = execute(path, args.timeout)
        seconds = time.perf_counter() - start
        timings.append((name, seconds, error))
        if error:
            failed.append(name)
            print(f"FAILED {name} after {seconds:.0f} s: {error} (not written)", flush=True)
            continue
        slowest = slowest_cells(nb)
        nbformat.write(clean(nb), path)
        print(f"ok     {name}: {seconds:.0f} s (slowest: {slowest})", flush=True)
    total = sum(seconds for _, seconds, _ in timings)
    print(f"\n| notebook | {mode} mode |\n|---|---|")
    for name, seconds, error in timings:
        print(f"| {name} | {'FAILED' if error else _duration(seconds)} |")
    print(f"| **total** | {_duration(total)} |")
    return 1 if failed else 0


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


if __name__ == "__main__":
    raise SystemExit(main())
