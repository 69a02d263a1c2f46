"""The teacher: fine-tuned once, cached on disk, and its logits computed once per dataset.

Cache layout under ``KD_CACHE_DIR`` (default ``~/.cache/kd_helpers``)::

    teachers/<key>/   model.safetensors, config.json, tokenizer files, manifest.json
    logits/<key>.safetensors

Each key hashes everything that changes the result (model, data fingerprint, hyper-parameters).
Every entry is written atomically and checked (checksums) before use; a bad entry is reported and rebuilt.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader

from kd_helpers import precision
from kd_helpers.cache import (
    atomic_dir,
    atomic_write_json,
    cache_key,
    load_tensor,
    read_json_checked,
    save_tensor,
    sha256_file,
)
from kd_helpers.config import cache_dir, pick_device
from kd_helpers.data import fingerprint, make_loader, tokenize
from kd_helpers.models import load_classifier, load_tokenizer, state_dict_sha256, tokenizer_sha256, weights_sha256
from kd_helpers.train import CachedTeacher, fine_tune, predict_logits


def teacher_key(base: str, train_ds, epochs: int, lr: float, batch_size: int, max_length: int, seed: int,
                bf16: bool = False) -> str:
    """The teacher's recipe (what it is trained from and how). Its *outputs* are keyed by its weights."""
    recipe = dict(kind="teacher", base=base, data=fingerprint(train_ds), epochs=epochs, lr=lr,
                  batch_size=batch_size, max_length=max_length, seed=seed)
    return cache_key(**recipe, **({"precision": precision.name(bf16)} if bf16 else {}))


def train_teacher(base_dir: str | Path, train_ds, epochs: int = 3, lr: float = 5e-5, batch_size: int = 32,
                  max_length: int = 64, seed: int = 42, device=None, progress: bool = True, bf16: bool = False,
                  log=print) -> tuple:
    """Fine-tune ``base_dir`` on ``train_ds`` with cross-entropy, or load the cached result.

    Returns ``(model, tokenizer, info)``; ``info["cached"]`` says whether it was loaded. Ctrl-C propagates
    (an interrupted teacher is never cached).
    """
    from transformers import set_seed

    device = device or pick_device()
    key = teacher_key(_model_id(base_dir), train_ds, epochs, lr, batch_size, max_length, seed, bf16)
    folder = cache_dir() / "teachers" / key
    if folder.exists():
        try:
            _check_teacher_dir(folder, key)
            return load_classifier(folder), load_tokenizer(folder), {"key": key, "cached": True, "path": folder}
        except ValueError as exc:
            log(f"teacher cache {folder} is unusable ({exc}); retraining")
    log(f"Teacher: fine-tuning the base on {len(train_ds)} rows for {epochs} epoch(s); cached for later runs...")
    tokenizer = load_tokenizer(base_dir)
    set_seed(seed)
    model = load_classifier(base_dir, num_labels=2)
    fine_tune(model, teacher_loader(tokenize(train_ds, tokenizer, max_length), tokenizer, batch_size, seed),
              device, epochs=epochs, lr=lr, progress=progress, bf16=bf16)
    model.to("cpu").eval()

    def build(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / "manifest.json", {"key": key, "weights_sha256": sha256_file(tmp / "model.safetensors")})

    atomic_dir(folder, build)
    return model, tokenizer, {"key": key, "cached": False, "path": folder}


def teacher_loader(tokenized, tokenizer, batch_size: int, seed: int) -> DataLoader:
    """The teacher's batches: transformers' ``LengthGroupedSampler`` (mega-batches of 50 batches, longest first).

    The students' loaders group by length within chunks instead (``data.ChunkedLengthSampler``: a global sort
    stalled short student runs). The teacher keeps the recipe that every published number was made with: a
    different batch order gives a different teacher, and the cache key (the recipe's hyper-parameters) would not
    notice. It learns well with it: 85.6 % validation accuracy.
    """
    from transformers import DataCollatorWithPadding
    from transformers.trainer_pt_utils import LengthGroupedSampler

    lengths = [len(ids) for ids in tokenized["input_ids"]]
    sampler = LengthGroupedSampler(batch_size, lengths=lengths, generator=torch.Generator().manual_seed(seed))
    return DataLoader(tokenized, batch_size=batch_size, sampler=sampler,
                      collate_fn=DataCollatorWithPadding(tokenizer, return_tensors="pt"))


class TeacherEnsemble(torch.nn.Module):
    """Several fine-tuned teachers answering as one: the mean of their logits (a classic distillation source).

    Behaves like one classifier wherever a teacher goes (live teacher, cached logits, ``evaluate_model``).
    """

    def __init__(self, members: list):
        super().__init__()
        self.members = torch.nn.ModuleList(members)
        self.config = members[0].config

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None):
        from transformers.modeling_outputs import SequenceClassifierOutput

        inputs = {k: v for k, v in (("input_ids", input_ids), ("attention_mask", attention_mask),
                                    ("token_type_ids", token_type_ids)) if v is not None}
        return SequenceClassifierOutput(logits=torch.stack([m(**inputs).logits.float() for m in self.members]).mean(0))


def _check_teacher_dir(folder: Path, key: str) -> None:
    manifest = read_json_checked(folder / "manifest.json")
    if manifest.get("key") != key:
        raise ValueError(f"manifest key {manifest.get('key')!r} differs from {key!r}")
    if sha256_file(folder / "model.safetensors") != manifest.get("weights_sha256"):
        raise ValueError("weights checksum mismatch")


def logits_key(teacher, tokenizer, dataset, max_length: int) -> str:
    """What a teacher-logit cache entry depends on: the teacher's weights, its tokenizer, the exact rows,
    ``max_length`` and the precision (inference is fp32: :mod:`kd_helpers.precision`)."""
    return cache_key(kind="logits", weights=state_dict_sha256(teacher), tokenizer=tokenizer_sha256(tokenizer),
                     data=fingerprint(dataset), rows=len(dataset), max_length=max_length,
                     precision=precision.name(False))


def cached_teacher_logits(teacher, tokenizer, dataset, max_length: int = 64, batch_size: int = 64, device=None,
                          log=print) -> CachedTeacher:
    """Run the teacher once over ``dataset`` (or load that run from disk) and wrap it as a CachedTeacher.

    The key is :func:`logits_key`; the student may tokenise differently, since logits are looked up by row index.
    """
    device = device or pick_device()
    key = logits_key(teacher, tokenizer, dataset, max_length)
    path = cache_dir() / "logits" / f"{key}.safetensors"
    if path.exists():
        try:
            logits = load_tensor(path, key)
            if logits.shape[0] == len(dataset):
                return CachedTeacher(logits)
            log(f"teacher logits {path} have {logits.shape[0]} rows, expected {len(dataset)}; recomputing")
        except ValueError as exc:
            log(f"teacher logits cache is unusable ({exc}); recomputing")
    loader = make_loader(tokenize(dataset, tokenizer, max_length), tokenizer, batch_size)
    teacher.to(device)
    logits = predict_logits(teacher, loader, device)
    save_tensor(path, logits, key)
    return CachedTeacher(logits)


def _model_id(source) -> str:
    """Bundled or local weights are identified by their content, hub ids by name."""
    path = Path(source)
    weights = path / "model.safetensors"
    return weights_sha256(weights) if weights.is_file() else str(source)

