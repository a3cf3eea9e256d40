"""`micro serve`: its options (registered by cli.py) and the run: check, bind, load, serve until SIGTERM/Ctrl-C.

The port is bound before the model loads (a busy port is one ``error:`` line, exit 2, at once) and the bound
socket is handed to uvicorn; SIGTERM lets in-flight requests finish (uvicorn's graceful shutdown).
"""

from __future__ import annotations

import ipaddress
import socket
import sys
from pathlib import Path

import typer

from pipeline import checks as C
from pipeline.embed.backends.device import DEVICE, DEVICE_HELP, check_device
from pipeline.errors import MicroError, OptionError
from pipeline.serve.batcher import MAX_BATCH, MAX_WAIT_MS

LOOPBACK_NAMES = ("localhost", "ip6-localhost")


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port); MicroError when the port is taken or the address is not ours."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise MicroError(f"--host {host} --port {port}: cannot listen ({exc.strerror or exc})") from None
    sock.set_inheritable(True)
    return sock


def check_options(host: str, port: int, scores: str, max_batch: int, max_wait_ms: float, api_key, max_body_bytes,
                  max_rows, context, device=DEVICE) -> str:  # fmt: skip
    """OptionError for a bad option; returns the canonical --device (CPU -> cpu)."""
    device = check_device(device)
    if scores not in ("raw", "sigmoid"):
        raise OptionError(f"--scores must be raw or sigmoid, got {scores!r}")
    if not 0 <= port <= 65535:
        raise OptionError(f"--port must be in 0..65535, got {port}")
    for name, value in (("--max-batch", max_batch), ("--max-body-bytes", max_body_bytes), ("--max-rows", max_rows)):
        C.integer(value, name)
    if max_wait_ms < 0:
        raise OptionError(f"--max-wait-ms must be >= 0, got {max_wait_ms}")
    if context is not None and not context.strip():
        raise OptionError("--context is empty")
    if api_key is not None and not api_key.strip():
        raise OptionError("--api-key is empty")
    if not is_loopback(host) and not api_key:
        raise OptionError(f"--host {host} is not a loopback address: give --api-key KEY (clients send a bearer token)")
    return device


def serve_command(
    model: Path,
    users: Path | None,
    host: str,
    port: int,
    context: str | None,
    scores: str,
    max_batch: int,
    max_wait_ms: float,
    api_key: str | None,
    max_body_bytes: int,
    max_rows: int,
    device: str = DEVICE,
) -> None:
    """Check the options, bind the port, load the model and its users, serve until stopped."""
    import uvicorn

    from pipeline.core.bundle import read_meta
    from pipeline.route.score import RewardModel
    from pipeline.serve.app import ServeConfig, create_app
    from pipeline.serve.batch import load_users

    device = check_options(
        host, port, scores, max_batch, max_wait_ms, api_key, max_body_bytes, max_rows, context, device
    )
    read_meta(model)
    if users is not None and not users.is_dir():
        raise OptionError(f"--users {users}: not a folder")
    sock = bind(host, port)
    try:
        rm = RewardModel.load(model, device=device)
        cfg = ServeConfig(users, context, scores, max_batch, max_wait_ms, api_key, max_body_bytes, max_rows)
        cfg.users = load_users(rm, users)
        rm.featurizer.features(["micro serve: warm-up"])  # weights loaded, device found, before the first request
        app = create_app(rm, cfg)
        print(
            f"serving {model} on http://{host}:{sock.getsockname()[1]} ({len(cfg.users)} users; POST /get_reward, "
            "POST /v1/rewards)",
            file=sys.stderr,
        )
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=30))
        server.run(sockets=[sock])
    finally:
        sock.close()


def serve(
    model: Path = typer.Argument(..., help="Model bundle (Stage-1 or routed)."),
    users: Path | None = typer.Option(None, help="Folder of user profiles (NAME.json); requests name them."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (not loopback: needs --api-key)."),
    port: int = typer.Option(5000, help="Port (OpenRLHF's reward server default)."),
    context: str | None = typer.Option(None, help="Context of rows whose label/item gives none."),
    scores: str = typer.Option("raw", help="/get_reward 'scores': raw (= rewards) | sigmoid (in 0..1)."),
    max_batch: int = typer.Option(MAX_BATCH, help="Rows coalesced into one scoring call."),
    max_wait_ms: float = typer.Option(MAX_WAIT_MS, help="How long a request waits for others to join its batch."),
    api_key: str | None = typer.Option(None, help="Bearer token clients must send (Authorization: Bearer KEY)."),
    max_body_bytes: int = typer.Option(8 * 1024 * 1024, help="Largest request body (bigger: 413)."),
    max_rows: int = typer.Option(4096, help="Most rows in one request (more: 413)."),
    device: str = typer.Option(DEVICE, help=DEVICE_HELP),
) -> None:
    """Serve rewards over HTTP: OpenRLHF /get_reward, /v1/rewards, micro-batched (TRL/verl adapters: README)."""
    serve_command(
        model, users, host, port, context, scores, max_batch, max_wait_ms, api_key, max_body_bytes, max_rows, device
    )
