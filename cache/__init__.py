"""Storage only: the content-addressed Parquet embedding cache and atomic writes."""

from cache.atomic import atomic_path, write_json_atomic

__all__ = ["atomic_path", "write_json_atomic"]
