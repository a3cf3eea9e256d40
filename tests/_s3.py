"""A local S3 endpoint for the object-store tests: moto's ThreadedMotoServer on 127.0.0.1 and a free port.

:func:`moto_s3` starts it, points the standard AWS environment at it (fake credentials, ``AWS_ENDPOINT_URL``, no
instance-metadata lookups) and always stops it and restores the environment; :func:`new_bucket` makes a fresh
bucket. The session fixture ``s3`` in conftest.py wraps it (other test modules, e.g. the Ray ones, use that).
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
def moto_s3() -> Iterator[str]:
    """Yield the endpoint URL of a moto S3 server on loopback, with the AWS environment pointed at it."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no request log lines in the test output
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    url = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in (*ENV, "AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN")}
    server.start()
    try:
        os.environ.update(ENV, AWS_ENDPOINT_URL=url)
        os.environ.pop("AWS_PROFILE", None)
        os.environ.pop("AWS_SESSION_TOKEN", None)
        yield url
    finally:
        server.stop()
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
