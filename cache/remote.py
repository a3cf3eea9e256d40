"""Where a cache lives: a local folder (:class:`cache.store.EmbeddingStore`, flock + rename) or an fsspec object
store URL such as ``s3://bucket/prefix`` or ``gs://bucket/prefix`` (:class:`cache.objstore.ObjectStore`: create-only
PUTs and manifest fragments, no lock, no rename).

``file://PATH`` and plain paths are local. Credentials and endpoints come from the store's own standard
configuration (for S3: ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_PROFILE`` / ``~/.aws``, the
endpoint from ``AWS_ENDPOINT_URL`` or ``FSSPEC_S3_ENDPOINT_URL``); micro never writes them anywhere.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.errors import CacheError

LOCAL_SCHEMES = ("", "file", "local")


def scheme(root) -> str:
    """The URL scheme of ``root`` ('' for a plain path)."""
    text = str(root)
    return text.split("://", 1)[0].lower() if "://" in text else ""


def is_remote(root) -> bool:
    """True for an object-store URL (``s3://``, ``gs://``, ...), False for a local path or ``file://``."""
    return root is not None and scheme(root) not in LOCAL_SCHEMES


def local_path(root) -> Path:
    """A local cache root (``file://`` stripped), ``~`` expanded."""
    text = str(root)
    if scheme(text) in ("file", "local"):
        text = text.split("://", 1)[1]
    return Path(text).expanduser()


def join(root: str, *parts: str) -> str:
    """``root/part/...`` for a URL or a path string."""
    return "/".join([str(root).rstrip("/"), *parts])


def parent(store_dir: str) -> str | Path:
    """The cache root of a store folder recorded in run.json / model.json (a URL stays a URL)."""
    if is_remote(store_dir):
        return str(store_dir).rstrip("/").rsplit("/", 1)[0]
    return Path(store_dir).parent


def check_credentials(url: str) -> None:
    """CacheError (one line, naming the variables) when ``url`` is on S3 and no credentials can be found."""
    if scheme(url) not in ("s3", "s3a"):
        return
    if os.environ.get("AWS_ACCESS_KEY_ID") and not os.environ.get("AWS_SECRET_ACCESS_KEY"):
        raise CacheError(f"{url}: AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not")
    try:
        import botocore.session
    except ImportError:  # pragma: no cover - s3fs depends on botocore
        raise CacheError(f"{url}: S3 needs s3fs: pip install 'micro-rm[s3]'") from None
    if botocore.session.get_session().get_credentials() is None:
        raise CacheError(
            f"{url}: no S3 credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, "
            "or ~/.aws/credentials); the endpoint comes from AWS_ENDPOINT_URL"
        )


def filesystem(url: str):
    """(fsspec filesystem, path inside it) of an object-store URL; CacheError when its driver is missing or
    credentials are absent."""
    check_credentials(url)
    try:
        from fsspec.core import url_to_fs
    except ImportError:
        raise CacheError(f"{url}: object-store caches need fsspec and s3fs: pip install 'micro-rm[s3]'") from None
    try:
        fs, path = url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise CacheError(f"{url}: cannot open this store ({str(exc).splitlines()[0]})") from None
    return fs, path.rstrip("/")


def put_create(fs, path: str, data: bytes) -> bool:
    """Write ``data`` at ``path`` in one create-only PUT (S3: ``If-None-Match: *``); False if ``path`` exists
    already (a lost race: the object there is left untouched)."""
    try:
        fs.pipe_file(path, data, mode="create")
    except FileExistsError:
        return False
    except OSError as exc:  # s3fs maps 412 PreconditionFailed to FileExistsError; others stay OSError
        if "PreconditionFailed" in str(exc) or "412" in str(exc):
            return False
        raise
    return True


def move(fs, src: str, dst: str) -> None:
    """Move an object (copy + delete: not atomic on object stores; a copy left behind is harmless)."""
    fs.copy(src, dst)
    fs.rm_file(src)
