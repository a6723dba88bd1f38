"""`model.pretrained=true` without network: cached weights load, missing ones are a prompt ConfigError.

The Hub endpoint is pointed at a local port that refuses connections (or a server that never answers),
so these tests never download, with or without internet.
"""
import socket
import time

import pytest
import timm
import torch
from huggingface_hub import constants as hub_constants
from safetensors.torch import save_file

import wildcapture.vit
from wildcapture.errors import ConfigError
from wildcapture.vit import build_vit

NAME = "vit_tiny_patch16_224.augreg_in21k"
TINY = {"img_size": 32, "patch_size": 16, "embed_dim": 16, "depth": 1, "num_heads": 2}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens there once the socket is closed


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache under tmp_path, and a Hub endpoint that refuses connections."""
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub_constants, "ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    return tmp_path / "hub"


def _build() -> torch.nn.Module:
    return build_vit({"name": NAME, "num_classes": 3, "kwargs": TINY}, pretrained=True)


def test_weights_neither_cached_nor_downloadable_fail_fast_naming_both_fixes(empty_cache):
    started = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        _build()
    assert time.perf_counter() - started < 15
    message = str(err.value)
    assert f"pretrained weights of timm model '{NAME}' could not be downloaded" in message
    assert "model.pretrained=false" in message and "model.init_weights=PATH" in message
    assert str(empty_cache) in message and "\n" not in message
    assert hub_constants.HF_HUB_OFFLINE is False  # the cache-only attempt leaves the setting as it was


def test_a_hub_that_never_answers_is_given_up_after_the_probe_timeout(empty_cache, monkeypatch):
    with socket.socket() as silent:  # accepts connections (the kernel does) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        monkeypatch.setattr(hub_constants, "ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
        monkeypatch.setattr(wildcapture.vit, "HUB_PROBE_TIMEOUT_S", 0.5)
        started = time.perf_counter()
        with pytest.raises(ConfigError, match="did not answer"):
            _build()
    assert time.perf_counter() - started < 5


def test_cached_weights_load_without_network(empty_cache):
    source = timm.create_model("vit_tiny_patch16_224", num_classes=7, **TINY)
    repo = empty_cache / f"models--timm--{NAME}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, repo / "snapshots" / commit / "model.safetensors")

    model = _build()  # the endpoint refuses connections: this can only come from the cache
    loaded, saved = model.state_dict(), source.state_dict()
    assert model.head.weight.shape == (3, 16)  # a fresh head for our classes
    assert all(torch.equal(loaded[k], saved[k]) for k in saved if not k.startswith("head."))
