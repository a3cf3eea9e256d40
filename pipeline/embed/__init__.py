"""Stage 0 embedding: backends, the cache-filling loop, data-parallel workers."""
