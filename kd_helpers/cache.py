"""Atomic, checksummed files: nothing a crash or Ctrl-C interrupts is ever read back half-written."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file


def cache_key(**parts) -> str:
    """A short, stable hash of JSON-serialisable parts (model, data fingerprint, hyper-parameters)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        _default_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj: dict) -> None:
    """JSON with a top-level ``_sha256`` of its own content, so that a truncated or edited file is detected."""
    data = json.loads(json.dumps({k: v for k, v in obj.items() if k != "_sha256"}, default=_json_default))
    payload = {**data, "_sha256": _json_sha(data)}
    atomic_write_bytes(path, (json.dumps(payload, indent=2) + "\n").encode())


def read_json_checked(path: str | Path) -> dict:
    """Read a file written by :func:`atomic_write_json`; raise ``ValueError`` if it is corrupt."""
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
        expected = payload.pop("_sha256")
    except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a valid kd_helpers JSON file ({exc.__class__.__name__})") from exc
    if _json_sha(payload) != expected:
        raise ValueError(f"{path}: checksum mismatch (partial or edited file)")
    return payload


def _json_sha(data: dict) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def save_tensor(path: str | Path, tensor: torch.Tensor, key: str) -> None:
    """Save one tensor as safetensors with its cache key and checksum in the metadata, atomically."""
    tensor = tensor.detach().cpu().contiguous()
    meta = {"key": key, "sha256": _tensor_sha(tensor)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({"tensor": tensor}, tmp, metadata=meta)
        _default_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_tensor(path: str | Path, key: str) -> torch.Tensor:
    """Load a tensor saved by :func:`save_tensor`; ``ValueError`` if the key or checksum does not match."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        tensor = load_file(str(path))["tensor"]
    except (SafetensorError, OSError, KeyError, RuntimeError) as exc:
        raise ValueError(f"{path}: unreadable cache entry ({exc.__class__.__name__})") from exc
    if meta.get("key") != key:
        raise ValueError(f"{path}: cache key {meta.get('key')!r} does not match {key!r}")
    if meta.get("sha256") != _tensor_sha(tensor):
        raise ValueError(f"{path}: checksum mismatch (partial or corrupt file)")
    return tensor


def check_writable(folder: str | Path, option: str = "--output-dir") -> Path:
    """Create ``folder`` if needed and prove a file can be written there; ``KDError`` in one line otherwise."""
    from kd_helpers.errors import KDError

    folder = Path(folder).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".kd_write_test."):
            pass
    except OSError as exc:
        raise KDError(f"{option} {folder}: cannot write there ({exc.__class__.__name__}: {exc.strerror})") from None
    return folder


def atomic_dir(final: str | Path, build: Callable[[Path], None]) -> Path:
    """Build a directory in a temporary sibling with ``build(tmp)``, then rename it to ``final``."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        build(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _default_mode(path: str) -> None:
    """mkstemp creates 0600 files; give them the permissions a plain open() would (0666 minus the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _tensor_sha(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.numpy().tobytes()).hexdigest()


def _json_default(obj):
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
