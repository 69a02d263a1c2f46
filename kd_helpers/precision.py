"""One precision policy, decided here and nowhere else.

- **Inference is fp32 everywhere**: teacher logits (cached or live), evaluation, predictions. So a cached teacher
  logit and a live one are the same number, whatever the device.
- **The student's training forwards** run under bf16 autocast when ``bf16`` is true; the loss, the optimizer and
  the weights stay fp32. ``bf16=None`` asks for the device's default: CUDA when
  ``torch.cuda.is_bf16_supported()``, a CPU when it has bf16 instructions (AMX or AVX512-BF16) and
  :data:`CPU_BF16_DEFAULT` is on, never on MPS.
- **The teacher's fine-tuning** is fp32 unless bf16 is asked for explicitly (``KD_CPU_BF16=1``, ``bf16=True``):
  it runs once and is cached, and one teacher for every machine keeps published numbers comparable.

Callers pass ``bf16`` down as an argument; only the command line reads ``KD_CPU_BF16`` (via ``KDConfig``).
"""

from __future__ import annotations

from contextlib import nullcontext
from functools import lru_cache
from pathlib import Path

import torch

from kd_helpers.errors import KDError

# bf16 autocast on a CPU with bf16 instructions: measured faster at the same accuracy over 3 seeds for the base and
# the compact student (benchmarks/README.md, "bf16 on the CPU"), so the default there; KD_CPU_BF16=0 turns it off.
CPU_BF16_DEFAULT = True


@lru_cache(maxsize=1)
def cpu_bf16_instructions() -> str | None:
    """``"amx_bf16"`` or ``"avx512_bf16"`` when this CPU has them (Linux ``/proc/cpuinfo``), else None."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return None
    names = set(flags.split(":", 1)[1].split())
    return next((name for name in ("amx_bf16", "avx512_bf16") if name in names), None)


def resolve_bf16(device: torch.device, requested: bool | None = None) -> bool:
    """Whether training forwards on ``device`` use bf16 autocast: ``requested``, or the device's default.

    Asking for bf16 where it cannot run (MPS, a CUDA card without bf16) is a ``KDError``.
    """
    device = torch.device(device)
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
        if requested and not supported:
            raise KDError(f"bf16 was requested but {torch.cuda.get_device_name(device)} does not support it")
        return supported if requested is None else bool(requested)
    if device.type == "cpu":
        if requested is None:
            return CPU_BF16_DEFAULT and cpu_bf16_instructions() is not None
        return bool(requested)
    if requested:
        raise KDError(f"bf16 was requested but is not used on {device.type}")
    return False


def train_autocast(device: torch.device, bf16: bool):
    """The context for a training forward: bf16 autocast if ``bf16``, else full precision."""
    device = torch.device(device)
    if bf16 and device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def inference(device: torch.device):
    """The context for every inference forward: fp32, even inside someone else's autocast region."""
    device = torch.device(device)
    if device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, enabled=False)
    return nullcontext()


def name(bf16: bool) -> str:
    """What results and cache keys record: ``"bf16-autocast"`` or ``"fp32"``."""
    return "bf16-autocast" if bf16 else "fp32"
