"""Shard files of the embedding cache: one Parquet table of ``key: fixed_size_binary(16)`` and ``vec``, the raw
little-endian float16|float32 vector as ``fixed_size_binary(dim * itemsize)`` (field metadata ``dtype``); shards
of the earlier layout (``vec: fixed_size_list<float16|float32>[dim]``) are still read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cache.keys import KEY_BYTES
from pipeline.errors import CacheError


def check_vectors(keys: np.ndarray, vectors, dim: int | None, where) -> np.ndarray:
    """``vectors`` (n, d) as an array, checked before it is stored under ``keys`` (n,) in the cache ``where`` of
    width ``dim`` (None: not fixed yet); CacheError for a wrong width or NaN/inf."""
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or len(vectors) != len(keys):
        raise ValueError(f"vectors must be (n, d) with n = {len(keys)}, got {vectors.shape}")
    if dim is not None and vectors.shape[1] != dim:
        raise CacheError(f"vector width {vectors.shape[1]} != cache width {dim} in {where}")
    if not np.isfinite(vectors).all():
        bad = int((~np.isfinite(vectors)).any(1).sum())
        raise CacheError(
            f"the model returned non-finite embeddings (NaN/inf) for {bad} texts; refusing to cache them "
            "(try --dtype float32)"
        )
    return vectors


def vector_width(f, dtype: str) -> int | str:
    """Vector width of a shard's ``vec`` field (a pyarrow Field) for storage ``dtype`` ('float16' | 'float32'),
    or why it is not a vector of that dtype."""
    t = f.type
    if pa.types.is_fixed_size_binary(t):  # raw vector bytes per row: no list levels, reads at memcpy speed
        tag = (f.metadata or {}).get(b"dtype")
        item = np.dtype(dtype).itemsize
        if tag != dtype.encode() or t.byte_width % item:
            return f"unexpected vector type {t} (dtype {tag})"
        return t.byte_width // item
    if pa.types.is_fixed_size_list(t) and t.value_type == pa.from_numpy_dtype(np.dtype(dtype)):  # the earlier layout
        return t.list_size
    return f"unexpected vector type {t}"


def check_shard(path: Path, dim: int | None, dtype: str) -> tuple[int, int] | str:
    """(rows, bytes) of a readable shard with the right schema (width ``dim`` when known), or why it is unusable."""
    try:
        meta = pq.read_metadata(path)
        schema = meta.schema.to_arrow_schema()
    except Exception as exc:  # noqa: BLE001 - any read failure means damaged
        return f"unreadable footer: {exc}"
    if schema.names != ["key", "vec"]:
        return f"unexpected columns {schema.names}"
    width = vector_width(schema.field("vec"), dtype)
    if isinstance(width, str):
        return width
    if dim is not None and width != dim:
        return f"vector width {width} != {dim}"
    return meta.num_rows, path.stat().st_size


def read_shard(path, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """(keys (n,) S16, vectors (n, dim) ``dtype``) of a shard (a local path, memory-mapped, or the shard's bytes),
    page checksums verified; raises if damaged."""
    if isinstance(path, (bytes, bytearray, memoryview)):
        table = pq.read_table(pa.BufferReader(path), page_checksum_verification=True)
    else:
        table = pq.read_table(path, memory_map=True, page_checksum_verification=True)
    keys = np.frombuffer(table.column("key").combine_chunks().buffers()[1], dtype=f"S{KEY_BYTES}", count=table.num_rows)
    dim = vector_width(table.schema.field("vec"), dtype)
    if isinstance(dim, str):
        raise ValueError(dim)
    vec = table.column("vec").combine_chunks()
    if pa.types.is_fixed_size_binary(vec.type):  # zero-copy view of the decoded column
        flat = np.frombuffer(
            vec.buffers()[1],
            dtype=np.dtype(dtype).newbyteorder("<"),
            count=table.num_rows * dim,
            offset=vec.offset * vec.type.byte_width,
        )
    else:
        flat = vec.flatten().to_numpy(zero_copy_only=False)
    return keys, flat.reshape(table.num_rows, dim)


def shard_bytes(keys: np.ndarray, vectors: np.ndarray, dtype: str) -> bytes:
    """The bytes of the shard :func:`write_shard` would write (built in memory, for one object-store PUT)."""
    sink = pa.BufferOutputStream()
    write_shard(sink, keys, vectors, dtype)
    return sink.getvalue().to_pybytes()


def write_shard(path, keys: np.ndarray, vectors: np.ndarray, dtype: str) -> None:
    """Write keys (n,) S16 and vectors (n, dim) as a shard of storage ``dtype`` at ``path`` (a path or a pyarrow
    output stream; not atomic)."""
    key_arr = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(KEY_BYTES), len(keys), [None, pa.py_buffer(np.ascontiguousarray(keys).tobytes())]
    )
    v = np.ascontiguousarray(vectors, dtype=np.dtype(dtype).newbyteorder("<"))
    vec_type = pa.binary(vectors.shape[1] * v.itemsize)
    vec_arr = pa.FixedSizeBinaryArray.from_buffers(vec_type, len(v), [None, pa.py_buffer(v)])
    schema = pa.schema(
        [
            pa.field("key", pa.binary(KEY_BYTES), nullable=False),
            pa.field("vec", vec_type, nullable=False, metadata={"dtype": dtype}),
        ]
    )
    table = pa.Table.from_arrays([key_arr, vec_arr], schema=schema)
    pq.write_table(
        table, path, compression="none", use_dictionary=False, write_page_checksum=True, write_statistics=False
    )
