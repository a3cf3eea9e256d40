"""Embedder identity and model-folder checks (pipeline/backends/base.py, the sentence-transformers backend)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from pipeline.embed.backends.base import fingerprint_id, resolve_model_path, weights_hash
from pipeline.errors import MicroError, OptionError


def st_folder(dst: Path, weights: bytes) -> Path:
    """The bundled MiniLM folder's small files plus ``weights`` as model.safetensors (nothing is loaded)."""
    from pipeline.embed.backends.st import default_model_path

    src = Path(default_model_path())
    for p in src.rglob("*"):
        if p.is_file() and p.suffix != ".safetensors":
            (dst / p.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(p, dst / p.relative_to(src))
    (dst / "model.safetensors").write_bytes(weights)
    return dst


def test_weights_under_a_cache_folder_are_hashed(tmp_path):
    """Two models with the same folder name under `.cache` ancestors (a venv in ~/.cache, a hub snapshot) that
    differ in one weight byte get different hashes, so they never share cached vectors."""
    a = st_folder(tmp_path / ".cache" / "hub" / "a" / "model", b"\x00" * 4096)
    b = st_folder(tmp_path / ".cache" / "hub" / "b" / "model", b"\x00" * 4095 + b"\x01")
    assert weights_hash(a) != weights_hash(b)
    assert weights_hash(a) != hashlib.sha256().hexdigest()[:16]  # not the hash of no files at all
    from pipeline.embed.backends.st import SentenceTransformersBackend

    fa, fb = SentenceTransformersBackend(str(a)).fingerprint(), SentenceTransformersBackend(str(b)).fingerprint()
    assert fa["model"] == fb["model"] == "model" and fingerprint_id(fa) != fingerprint_id(fb)


def test_download_metadata_inside_the_folder_is_ignored(tmp_path):
    a = st_folder(tmp_path / "a", b"w" * 100)
    h = weights_hash(a)
    (a / ".cache" / "huggingface").mkdir(parents=True)
    (a / ".cache" / "huggingface" / "download.json").write_text('{"etag": "x"}')
    assert weights_hash(a) == h


def test_non_local_model_names_the_model():
    with pytest.raises(MicroError) as exc:
        resolve_model_path("org/model-x")
    assert "huggingface-cli download org/model-x --local-dir" in str(exc.value) and "{model}" not in str(exc.value)


@pytest.mark.parametrize("bad", [0, -3])
def test_max_length_must_be_positive(bad):
    """--max-length 0 used to become the model default silently (same fingerprint as a default run)."""
    from pipeline.embed.backends.st import SentenceTransformersBackend

    with pytest.raises(OptionError, match=f"--max-length must be >= 1, got {bad}"):
        SentenceTransformersBackend(max_length=bad)
    with pytest.raises(OptionError, match="beyond the 512 positions"):
        SentenceTransformersBackend(max_length=513)
    assert SentenceTransformersBackend(max_length=512).max_length == 512
