"""Shared helpers of the serving tests: an in-process uvicorn server on 127.0.0.1 (a free port) in a thread,
stopped when the ``with`` block ends (even on failure), and the bundles / profiles it serves (tests/_stage2.py)."""

from __future__ import annotations

import json
import shutil
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from _stage2 import make_bundle, patch_backend, route_cli, synthetic_rows, write_table


@contextmanager
def running(rm, timeout: float = 20.0, **config):
    """``with running(rm, users_dir=..., ...) as (url, app):`` a live server of ``create_app(rm, ServeConfig)``."""
    import uvicorn

    from pipeline.serve.app import ServeConfig, create_app
    from pipeline.serve.batch import load_users
    from pipeline.serve.command import bind

    cfg = ServeConfig(**config)
    cfg.users = load_users(rm, cfg.users_dir)
    app = create_app(rm, cfg)
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="error", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", app
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()


def build_models(root: Path) -> dict:
    """A context-gated bundle, its routed bundle and users folder (adapted profiles, residuals on g1), plus an
    online Hedge profile folder: {"bundle", "routed", "users", "hedge"}."""
    import pytest

    rows = [r for r in synthetic_rows(n_per_group=120, topic=True) if r["group"] != "g1"]
    user = write_table(synthetic_rows(n_per_group=60, seed=3, prefix="u", test_frac=0.5), root / "user.parquet")
    with pytest.MonkeyPatch.context() as mp:
        patch_backend(mp)
        bundle = make_bundle(root, rows, gate_input="context", k=2)
        capsys = _NoCapture()
        code, _, err = route_cli(mp, capsys, bundle, user, root / "routed", "--budget-per-group", "25", "--seeds", "1")
        assert code == 0, err
        code, _, err = route_cli(mp, capsys, bundle, user, root / "hedge", "--online", "--user", "g2")
        assert code == 0, err
    users = root / "routed" / "users"
    assert json.loads((users / "g1.json").read_text())["choice"] == "residual"
    for f in (root / "hedge").glob("g2.*"):  # the Hedge profile beside the adapted ones, as user 'hedge'
        shutil.copy(f, users / f"hedge{f.suffix}")
    return {"bundle": bundle, "routed": root / "routed", "users": users}


class _NoCapture:
    """capsys stand-in for run_cli outside a test function (module fixtures)."""

    def readouterr(self):
        class Out:
            out = err = ""

        return Out()
