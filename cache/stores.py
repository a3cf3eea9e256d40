"""Open the cache of one embedder wherever it lives: a local folder or an object-store URL (see cache.remote)."""

from __future__ import annotations

from cache.objstore import ObjectStore
from cache.remote import is_remote, local_path, parent
from cache.store import EmbeddingStore

__all__ = ["open_store", "parent"]


def open_store(
    root, fingerprint: dict, fingerprint_id: str, dtype: str = "float32", read_only: bool = False
) -> EmbeddingStore | ObjectStore:
    """An :class:`EmbeddingStore` for a local path or ``file://`` (today's code path), an :class:`ObjectStore` for
    ``s3://`` / ``gs://`` / any other fsspec URL; ``read_only``: for reading alone (nothing is created, probed or
    cleaned up there)."""
    if is_remote(root):
        return ObjectStore(str(root), fingerprint, fingerprint_id, dtype, read_only=read_only)
    return EmbeddingStore(local_path(root), fingerprint, fingerprint_id, dtype, read_only=read_only)
