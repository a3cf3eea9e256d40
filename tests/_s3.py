"""A local S3 endpoint for the object-store tests: moto's ThreadedMotoServer on 127.0.0.1 and a free port.

:func:`moto_server` starts and always stops it; :func:`s3_env` is the standard AWS environment pointing at it (fake
credentials, ``AWS_ENDPOINT_URL``, no instance-metadata lookups); :func:`moto_s3` does both (scripts, benchmarks);
:func:`new_bucket` makes a fresh bucket. conftest.py's ``s3_endpoint`` (session) and ``s3_bucket`` (per test,
environment set with monkeypatch, so subprocesses inherit it) wrap them.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from typing import Iterator

ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/micro-test-credentials",
    "AWS_CONFIG_FILE": "/nonexistent/micro-test-config",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """Yield the endpoint URL of a moto S3 server on 127.0.0.1 (a free port); always stopped afterwards."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no request log lines in the test output
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def s3_env(endpoint: str) -> dict[str, str]:
    """The AWS environment that points s3fs / botocore at ``endpoint`` with fake credentials."""
    return {**ENV, "AWS_ENDPOINT_URL": endpoint}


UNSET = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "FSSPEC_S3_ENDPOINT_URL")


@contextlib.contextmanager
def moto_s3() -> Iterator[str]:
    """:func:`moto_server` with the AWS environment pointed at it for the duration (restored afterwards)."""
    saved = {k: os.environ.get(k) for k in (*ENV, "AWS_ENDPOINT_URL", *UNSET)}
    with moto_server() as url:
        try:
            for k in UNSET:
                os.environ.pop(k, None)
            os.environ.update(s3_env(url))
            yield url
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def new_bucket(endpoint: str) -> str:
    """Create a fresh bucket on the server; returns its ``s3://NAME`` URL."""
    import boto3

    name = f"micro-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return f"s3://{name}"
