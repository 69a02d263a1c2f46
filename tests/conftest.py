"""Shared fixtures: no network, a private cache, and tiny local models shaped like hub checkouts."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ["KD_CACHE_DIR"] = os.environ.get("KD_TEST_CACHE_DIR") or str(ROOT / "tests" / "artifacts" / "cache")

_real_connect = socket.socket.connect
NETWORK_ATTEMPTS: list = []  # every non-loopback connection a test tried (and was refused)


def _loopback_only(self, address):
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, str) and host not in ("127.0.0.1", "localhost", "::1") and not host.startswith("127."):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            NETWORK_ATTEMPTS.append(address)
            raise ConnectionRefusedError(f"tests never touch the network (tried {address})")
    return _real_connect(self, address)


@pytest.fixture(scope="session", autouse=True)
def no_network():
    """Session-wide, so that module- and session-scoped fixtures (the fast distill run) are guarded too."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", _loopback_only)
        yield


@pytest.fixture(scope="session")
def minilm_path():
    from kd_helpers.models import minilm_dir

    return minilm_dir()


def _save_tiny(folder: Path, config, model_cls, minilm: Path) -> Path:
    import torch
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    model = model_cls(config)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, minilm_path):
    """A 2-layer, 32-wide BERT classifier with the MiniLM vocabulary: a stand-in for any hub model."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=2)
    return _save_tiny(tmp_path_factory.mktemp("tiny_bert"), config, BertForSequenceClassification, minilm_path)


@pytest.fixture(scope="session")
def tiny_distilbert_dir(tmp_path_factory, minilm_path):
    """A tiny DistilBERT classifier laid out like a hub checkout (config.json, model.safetensors, tokenizer)."""
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    config = DistilBertConfig(vocab_size=30522, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                              max_position_embeddings=128, num_labels=2,
                              id2label={0: "NEGATIVE", 1: "POSITIVE"}, label2id={"NEGATIVE": 0, "POSITIVE": 1})
    return _save_tiny(tmp_path_factory.mktemp("tiny_distilbert"), config, DistilBertForSequenceClassification,
                      minilm_path)


def run_cli(*args, env=None, timeout=600):
    """Run ``python -m kd_helpers ARGS`` in a subprocess; returns the CompletedProcess."""
    import subprocess

    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "kd_helpers", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=ROOT)
