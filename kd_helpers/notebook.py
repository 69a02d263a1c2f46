"""Three small notebook helpers: show the package's real source, check a hand computation, print the set-up.

The notebooks explain code by showing it from the package itself (``show_source``), so there is never a
second copy to drift out of date.
"""

from __future__ import annotations

import inspect
import os
import platform
from pathlib import Path

import torch


def show_source(obj, start: str | None = None, end: str | None = None) -> None:
    """Display the real source of a kd_helpers function or class as highlighted code, with file and lines.

    ``start`` / ``end`` (optional) cut the listing to the lines from the first one containing ``start`` to
    the first later one containing ``end`` (inclusive), for long functions where the text discusses one part.
    """
    from IPython.display import Code, Markdown, display

    lines, first = inspect.getsourcelines(obj)
    lo, hi = 0, len(lines)
    if start is not None:
        lo = next(i for i, line in enumerate(lines) if start in line)
    if end is not None:
        hi = next(i for i, line in enumerate(lines) if i >= lo and end in line) + 1
    path = Path(inspect.getsourcefile(obj) or "?")
    package_root = Path(__file__).resolve().parent.parent
    shown = path.resolve().relative_to(package_root) if path.resolve().is_relative_to(package_root) else path
    display(Markdown(f"`{shown}`, lines {first + lo}–{first + hi - 1}:"))
    display(Code("".join(lines[lo:hi]), language="python"))


def cmp(name: str, ours, reference, atol: float = 1e-6, rtol: float = 1e-5) -> bool:
    """Karpathy-style self-check: is a hand computation exactly / approximately the library's value?

    Prints ``name | exact | approximate | maxdiff`` and returns the approximate result, so a notebook can
    ``assert cmp(...)``.
    """
    ours_t, ref_t = torch.as_tensor(ours).detach().double(), torch.as_tensor(reference).detach().double()
    if ours_t.shape != ref_t.shape:
        raise ValueError(f"{name}: shapes differ, {tuple(ours_t.shape)} vs {tuple(ref_t.shape)}")
    exact = bool(torch.equal(ours_t, ref_t))
    approximate = bool(torch.allclose(ours_t, ref_t, atol=atol, rtol=rtol))
    maxdiff = (ours_t - ref_t).abs().max().item() if ours_t.numel() else 0.0
    print(f"{name:<28} | exact: {exact!s:5} | approximate: {approximate!s:5} | maxdiff: {maxdiff:.1e}")
    return approximate


def print_environment(config) -> None:
    """Versions, device, thread count and mode (fast or full): the first thing every notebook prints."""
    import transformers

    import kd_helpers
    from kd_helpers.config import cache_dir, pick_device

    mode = "fast (KD_FAST=1: small subset, few steps, small student)" if config.fast else "full"
    print(f"python        {platform.python_version()}")
    print(f"torch         {torch.__version__}")
    print(f"transformers  {transformers.__version__}")
    print(f"kd_helpers    {kd_helpers.__version__}")
    print(f"device        {pick_device(config.device)} ({torch.get_num_threads()} CPU threads)")
    print(f"mode          {mode}")
    cache = str(cache_dir()).replace(str(Path.home()), "~", 1)
    print(f"cache         {cache}" + ("" if os.environ.get("KD_CACHE_DIR") else " (set KD_CACHE_DIR to move it)"))
