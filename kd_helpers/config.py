"""Every knob of an experiment in one dataclass, plus the fast-mode switch and device choice."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from kd_helpers.errors import KDError

PRESETS = ("minilm", "distilbert-sst2")
STUDENTS = ("base", "compact", "tiny")
FAST_TRAIN_ROWS, FAST_VAL_ROWS = 400, 200
# Student learning rate when none is given: the reference's 5e-5 for the same-size student; the 2-layer
# compact student needs more (embedded corpus, 2 epochs, CE-only: 64.0 % at 5e-5, 76.7 % at 2e-4).
DEFAULT_LR = {"base": 5e-5, "compact": 2e-4, "tiny": 5e-4}


def env_flag(name: str) -> bool:
    """True when the environment variable ``name`` is 1/true/yes/on."""
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def fast_mode() -> bool:
    """True when ``KD_FAST`` is set to 1/true/yes: tests, CI and quick looks use the small run."""
    return env_flag("KD_FAST")


def cache_dir() -> Path:
    """Where teachers, teacher logits and sweeps are cached (``KD_CACHE_DIR``, default ``~/.cache/kd_helpers``)."""
    return Path(os.environ.get("KD_CACHE_DIR") or Path.home() / ".cache" / "kd_helpers").expanduser()


def pick_device(name: str | None = None) -> torch.device:
    """CUDA, then Apple MPS, then CPU; ``name`` ("cpu", "cuda", "cuda:1", "mps") overrides the choice."""
    if name and name != "auto":
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise KDError(f"--device {name}: CUDA is not available on this machine")
        if name == "mps" and not torch.backends.mps.is_available():
            raise KDError("--device mps: Apple MPS is not available on this machine")
        try:
            return torch.device(name)
        except RuntimeError as exc:
            raise KDError(f"--device {name!r} is not a device (use auto, cpu, cuda or mps)") from exc
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def option(help_text: str, **argparse_kwargs) -> dict:
    """Field metadata that turns a ``KDConfig`` field into a ``distill`` command-line option (see ``cli.py``)."""
    return {"help": help_text, **argparse_kwargs}


# What ``None`` means for the fields whose default depends on the mode: full mode (what learners run) and fast
# mode (KD_FAST=1: tests and CI; the same code path on a few hundred rows). A value you give always wins.
FULL = {"student": "base", "epochs": 3, "batch_size": 32, "teacher_epochs": 3, "teacher_lr": 1e-4,
        "train_rows": None, "val_rows": None}
# 25 steps (one epoch) left the compact student at chance; 50 steps learn (54 %, loss 0.45 -> 0.34)
FAST = {"student": "compact", "epochs": 2, "batch_size": 16, "teacher_epochs": 3, "teacher_lr": 1e-4,
        "train_rows": FAST_TRAIN_ROWS, "val_rows": FAST_VAL_ROWS}
FAST_COMPACT_LR = 3e-4  # 50 steps at 2e-4 leave the compact student on its starting plateau


@dataclass
class KDConfig:
    """One distillation experiment. ``alpha`` weights the KL (distillation) term, as in the reference.

    Fields left at ``None`` take the mode's value (``FULL``, or ``FAST`` when ``fast=True``: the same code path on a
    few hundred rows, two epochs, a small student); a value you set is never replaced. The ``distill`` command's
    options are generated from the fields that carry ``option(...)`` metadata.
    """

    preset: str = field(default="minilm", metadata=option(
        "minilm: offline default (bundled MiniLM, embedded corpus); distilbert-sst2: the hub", choices=PRESETS))
    student: str | None = field(default=None, metadata=option(
        "base: the teacher's architecture; compact: 2 of its layers; tiny: 1 layer, 3.9 M parameters "
        "(default base; fast mode compact)", choices=STUDENTS))
    data: str | None = field(default=None, metadata=option(
        "reviews (default), sst2, or a CSV/TSV/JSON(L) file or folder with text,label"))
    temperature: float = field(default=4.0, metadata=option("softmax temperature T of the KL term", type=float))
    alpha: float = field(default=0.7, metadata=option(
        "weight of the KL (teacher) term; 1-alpha weights CE (HF and Keras put alpha on CE)", type=float))
    epochs: int | None = field(default=None, metadata=option("student epochs (default 3; fast mode 2)", type=int))
    batch_size: int | None = field(default=None, metadata=option(
        "batch size of teacher and students (default 32; fast mode 16)", type=int))
    lr: float | None = field(default=None, metadata=option(
        "student learning rate (default: 5e-5 base, 2e-4 compact, 5e-4 tiny; fast mode 3e-4 compact)", type=float))
    max_length: int = field(default=64, metadata=option("tokens per row (longer rows are truncated)", type=int))
    seed: int = field(default=42, metadata=option("seed of teacher, student head and batch order", type=int))
    teacher_epochs: int | None = field(default=None, metadata=option("teacher fine-tuning epochs (default 3)",
                                                                     type=int))
    teacher_lr: float | None = field(default=None, metadata=option(
        "teacher learning rate (default 1e-4: 85.6 %% on the corpus; 8e-5 x 4 epochs gave 84.7 %%)", type=float))
    train_rows: int | None = field(default=None, metadata=option(
        "use only this many training rows (default all; fast mode 400)", type=int))
    val_rows: int | None = field(default=None, metadata=option(
        "use only this many validation/test rows (default all; fast mode 200)", type=int))
    output_dir: str = field(default="outputs", metadata=option("where results.json and the students go"))
    device: str = field(default="auto", metadata=option("auto (CUDA, then MPS, then CPU), cpu, cuda, mps"))
    bf16: bool | None = None  # training forwards under bf16 autocast; None: the device's default (precision.py)
    fast: bool = False
    baseline: bool = field(default=True, metadata=option(
        "skip the CE-only student", flag="--no-baseline", action="store_false"))
    small_student: bool = field(default=True, metadata=option(
        "skip the tiny student + transfer set vs CE-only comparison (3 seeds)", flag="--no-small-student",
        action="store_false"))
    group_by_length: bool = field(default=True, metadata=option(
        "random batches instead of length-grouped chunks", flag="--no-group-by-length", action="store_false"))
    freeze_embeddings: bool = field(default=False, metadata=option(
        "freeze the student's embeddings", action="store_true"))
    teacher: str | None = field(default=None, metadata=option(
        "a fine-tuned teacher (model id or folder) instead of the preset's"))
    base: str | None = field(default=None, metadata=option(
        "the student's starting weights (model id or folder) instead of the preset's"))
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.data is None:
            self.data = "sst2" if self.preset == "distilbert-sst2" else "reviews"
        mode = FAST if self.fast else FULL
        for name, value in mode.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.lr is None:
            fast_compact = self.fast and self.student == "compact"
            self.lr = FAST_COMPACT_LR if fast_compact else DEFAULT_LR.get(self.student, DEFAULT_LR["base"])
        self.validate()

    def validate(self) -> None:
        """Raise ``KDError`` (a ValueError) naming the first bad option value."""
        checks = [
            (self.preset in PRESETS, f"--preset {self.preset!r}: choose one of {', '.join(PRESETS)}"),
            (self.student in STUDENTS, f"--student {self.student!r}: choose one of {', '.join(STUDENTS)}"),
            (_finite_positive(self.temperature), f"--temperature {self.temperature!r}: must be a finite number > 0"),
            (_in_unit(self.alpha), f"--alpha {self.alpha!r}: must be between 0 and 1"),
            (_pos_int(self.epochs), f"--epochs {self.epochs!r}: must be an integer >= 1"),
            (_pos_int(self.teacher_epochs), f"--teacher-epochs {self.teacher_epochs!r}: must be an integer >= 1"),
            (_pos_int(self.batch_size), f"--batch-size {self.batch_size!r}: must be an integer >= 1"),
            (_finite_positive(self.lr), f"--lr {self.lr!r}: must be a finite number > 0"),
            (_finite_positive(self.teacher_lr), f"--teacher-lr {self.teacher_lr!r}: must be a finite number > 0"),
            (_pos_int(self.max_length) and self.max_length >= 8, f"--max-length {self.max_length!r}: must be >= 8"),
            (isinstance(self.seed, int) and self.seed >= 0, f"--seed {self.seed!r}: must be an integer >= 0"),
            (self.train_rows is None or _pos_int(self.train_rows), f"--train-rows {self.train_rows!r}: must be >= 1"),
            (self.val_rows is None or _pos_int(self.val_rows), f"--val-rows {self.val_rows!r}: must be >= 1"),
            (self.bf16 in (None, True, False), f"bf16 {self.bf16!r}: must be True, False or None"),
        ]
        for ok, message in checks:
            if not ok:
                raise KDError(message)

    @classmethod
    def from_env(cls, **overrides) -> KDConfig:
        """A config whose ``fast`` follows ``KD_FAST`` and ``bf16`` follows ``KD_CPU_BF16`` unless given."""
        overrides.setdefault("fast", fast_mode())
        overrides.setdefault("bf16", cpu_bf16_from_env())
        return cls(**overrides)

    def to_dict(self) -> dict:
        return asdict(self)


def cpu_bf16_from_env() -> bool | None:
    """``KD_CPU_BF16``: 1/true/yes/on forces bf16 autocast for training forwards, 0/false/no/off forces fp32,
    unset leaves the device's default (:mod:`kd_helpers.precision`)."""
    value = os.environ.get("KD_CPU_BF16", "").strip().lower()
    if not value:
        return None
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise KDError(f"KD_CPU_BF16={value!r}: use 1 (bf16) or 0 (fp32), or leave it unset")


def _finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _in_unit(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and 0.0 <= x <= 1.0


def _pos_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 1
