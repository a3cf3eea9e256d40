"""`micro serve` as a process: SIGTERM while a request is being scored → that request is answered, then the
process ends (by the signal, re-raised by uvicorn after its graceful shutdown). The subprocess runs the real CLI
with the fake AttrBackend (slowed down, so the request is in flight when the signal comes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from _stage2 import make_bundle, synthetic_rows

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = """
import sys, time
sys.path[:0] = [{root!r}, {tests!r}]
import pipeline.embed.backends
from _stage2 import AttrBackend

class Slow(AttrBackend):
    def embed(self, inputs):
        if any("slow" in t for t in inputs):
            time.sleep(1.5)
        return super().embed(inputs)

pipeline.embed.backends.get_backend = lambda name, model=None, **kw: Slow()
import cli
sys.argv = ["micro", "serve", {bundle!r}, "--port", "0", "--context", "criterion for g0"]
cli.main()
"""


def test_sigterm_finishes_the_request_in_flight(tmp_path):
    bundle = make_bundle(tmp_path, synthetic_rows(n_per_group=20, topic=True), gate_input="context", k=2)
    script = SCRIPT.format(root=str(ROOT), tests=str(ROOT / "tests"), bundle=str(bundle))
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        line = proc.stderr.readline()  # "serving BUNDLE on http://127.0.0.1:PORT ..."
        assert "serving" in line, line + proc.stderr.read()
        url = line.split(" on ")[1].split()[0]
        answer = {}

        def request():
            body = {"query": ["question sanswer slow attrs 1 0 0"], "prompts": ["question s"]}
            answer["r"] = httpx.post(f"{url}/get_reward", json=body, timeout=30)

        t = threading.Thread(target=request)
        t.start()
        time.sleep(0.5)  # the request is being scored (the backend sleeps 1.5 s)
        proc.send_signal(signal.SIGTERM)
        t.join(30)
        assert answer["r"].status_code == 200 and len(answer["r"].json()["rewards"]) == 1
        # uvicorn shuts down gracefully, then re-raises the signal: the process ends as terminated by SIGTERM
        assert proc.wait(timeout=30) == -signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
