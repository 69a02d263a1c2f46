"""Atomic, checksummed files: nothing a crash or Ctrl-C interrupts is ever read back half-written."""

from __future__ import annotations

import ctypes
import glob
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
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
    remove_stale_temporaries(path)
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
    _save_safetensors_atomically(path, {"tensor": tensor}, {"key": key, "sha256": _tensor_sha(tensor)})


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


def save_tensors(path: str | Path, tensors: dict, key: str, extra: dict | None = None) -> None:
    """Save named tensors (e.g. a state dict) with their cache key, a checksum and ``extra`` JSON, atomically."""
    tensors = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    meta = {"key": key, "sha256": _tensors_sha(tensors), "extra": json.dumps(extra or {})}
    _save_safetensors_atomically(path, tensors, meta)


def _save_safetensors_atomically(path: str | Path, tensors: dict, meta: dict) -> None:
    """Write to a temporary sibling, then rename over ``path``: readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        _default_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_tensors(path: str | Path, key: str) -> tuple[dict, dict]:
    """``(tensors, extra)`` saved by :func:`save_tensors`; ``ValueError`` if the key or checksum does not match."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        tensors = load_file(str(path))
        extra = json.loads(meta.get("extra", "{}"))
    except (SafetensorError, OSError, RuntimeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable cache entry ({exc.__class__.__name__})") from exc
    if meta.get("key") != key:
        raise ValueError(f"{path}: cache key {meta.get('key')!r} does not match {key!r}")
    if meta.get("sha256") != _tensors_sha(tensors):
        raise ValueError(f"{path}: checksum mismatch (partial or corrupt file)")
    return tensors, extra


def _tensors_sha(tensors: dict) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(_tensor_sha(tensors[name]).encode())
    return digest.hexdigest()


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


STALE_TMP_S = 3600  # a temporary entry older than this was left by a crashed writer: removed on the next write


def atomic_dir(final: str | Path, build: Callable[[Path], None]) -> Path:
    """Build a directory in a temporary sibling with ``build(tmp)``, then swap it in for ``final``.

    Readers see the old complete folder or the new complete folder, never a partial one: where ``final`` exists
    the two are exchanged atomically (Linux ``renameat2``; elsewhere the old one is renamed aside first) and only
    then is the old one deleted. Concurrent writers both succeed (the last one wins). Temporary siblings left by
    a crash more than :data:`STALE_TMP_S` ago are removed.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        build(tmp)
        _swap_in(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _swap_in(tmp: Path, final: Path) -> None:
    try:
        os.rename(tmp, final)  # atomic when final does not exist (or is an empty folder)
        return
    except OSError:
        if not final.is_dir():
            raise
    if _exchange(tmp, final):  # tmp now holds the old folder
        shutil.rmtree(tmp, ignore_errors=True)
        return
    aside = final.with_name(f".{final.name}.{os.getpid()}.{time.monotonic_ns()}.old.tmp")
    os.rename(final, aside)
    os.rename(tmp, final)
    shutil.rmtree(aside, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths (Linux ``renameat2(RENAME_EXCHANGE)``); False where that is unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def remove_stale_temporaries(final: str | Path, max_age_s: float = STALE_TMP_S) -> list[Path]:
    """Delete ``.<name>.*.tmp`` siblings of ``final`` (files or folders) older than ``max_age_s``."""
    final = Path(final)
    removed, now = [], time.time()
    for entry in final.parent.glob(f".{glob.escape(final.name)}.*.tmp"):
        try:
            if now - entry.lstat().st_mtime < max_age_s:
                continue
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            removed.append(entry)
        except OSError:
            continue  # another process removed or is using it
    return removed


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
