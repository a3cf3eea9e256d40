"""``--device auto|cpu|cuda|cuda:N`` for every backend: parsing (no torch import), resolution, the visible GPUs.

``auto`` (the default) is CUDA when torch sees a GPU, else the CPU: for the transformers and vLLM backends and for
sentence-transformers alike. ``cuda`` is the current CUDA device; ``cuda:N`` the N-th visible one.
"""

from __future__ import annotations

import importlib.util
import os
import re

from pipeline.errors import MicroError

DEVICE_CHOICES = "auto | cpu | cuda | cuda:N"
DEVICE = "auto"  #: the default of every --device
DEVICE_HELP = f"Where the embedder runs: {DEVICE_CHOICES} (auto: CUDA when present), every backend."
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_device(device: str | None) -> str:
    """The canonical spelling of a ``--device`` value (None -> 'auto'); a bad one is a :class:`MicroError`."""
    name = DEVICE if device is None else str(device).strip().lower()
    if not _DEVICE.match(name):
        raise MicroError(f"--device must be one of {DEVICE_CHOICES}, got {device!r}")
    return name


def device_kind(device: str | None) -> str | None:
    """'cuda' or 'cpu' when the value says which, None for 'auto' (decided by what torch sees)."""
    name = check_device(device)
    return None if name == "auto" else name.split(":")[0]


def resolve_device(device: str | None):
    """The ``torch.device`` a backend runs on; asking for CUDA where torch sees none is a :class:`MicroError`."""
    import torch

    name = check_device(device)
    have = torch.cuda.is_available()
    if name == "auto":
        return torch.device("cuda" if have else "cpu")
    if name.startswith("cuda"):
        if not have:
            raise MicroError(
                f"--device {name}: torch sees no CUDA device (torch {torch.__version__}); use --device cpu or auto"
            )
        index = int(name.split(":")[1]) if ":" in name else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise MicroError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
        return torch.device("cuda", index)
    return torch.device("cpu")


def visible_gpus() -> list[str]:
    """The GPUs this process may use: the ``CUDA_VISIBLE_DEVICES`` entries if set, else 0..n-1 from torch."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        out = []
        for d in (d.strip() for d in env.split(",") if d.strip()):  # CUDA stops at the first invalid entry
            if d.startswith("-"):
                break
            out.append(d)
        return out
    if importlib.util.find_spec("torch") is None:
        return []
    import torch

    try:
        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no driver
        return []
