"""pipeline.embed.backends.device: --device values for every backend."""

from __future__ import annotations

import os

import pytest

from pipeline.embed.backends.device import check_device, device_kind, resolve_device
from pipeline.errors import MicroError


def test_device_values():
    assert [check_device(v) for v in (None, "auto", "CPU", "cuda", "cuda:3")] == [
        "auto",
        "auto",
        "cpu",
        "cuda",
        "cuda:3",
    ]
    assert [device_kind(v) for v in (None, "auto", "cpu", "cuda:1")] == [None, None, "cpu", "cuda"]
    for bad in ("gpu", "cuda:", "cuda:x", "mps", ""):
        with pytest.raises(MicroError, match="--device must be one of auto"):
            check_device(bad)


def test_resolution_on_this_machine():
    import torch

    assert resolve_device("cpu").type == "cpu"
    if torch.cuda.is_available():  # pragma: no cover - GPU machines
        assert resolve_device("auto").type == "cuda"
        with pytest.raises(MicroError, match="visible"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
    else:
        assert resolve_device("auto").type == "cpu"
        with pytest.raises(MicroError, match="torch sees no CUDA device"):
            resolve_device("cuda:0")


def test_vllm_cuda_n_picks_the_nth_visible_gpu(monkeypatch):
    """vLLM's --device cuda:N narrows CUDA_VISIBLE_DEVICES; visible GPUs are counted the way CUDA counts them
    (the list stops at the first invalid entry), like the GPUs handed to --workers."""
    from pipeline.embed.backends.vllm_backend import select_gpu

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    select_gpu("cuda:1")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "5"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,-1,5")
    with pytest.raises(MicroError, match=r"--device cuda:1: only 1 CUDA device\(s\) are visible"):
        select_gpu("cuda:1")
    select_gpu("auto")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3,-1,5"
