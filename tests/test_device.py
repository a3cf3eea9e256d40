"""pipeline.embed.backends.device: --device values for every backend."""

from __future__ import annotations

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
