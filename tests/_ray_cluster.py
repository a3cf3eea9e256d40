"""A two-node Ray cluster on one machine, loopback only, for the cluster tests (tests/test_ray_cluster.py).

:func:`two_node_cluster` runs ``ray start --head`` and ``ray start --address`` (each with its own ``--temp-dir``,
free ports, one CPU, the worker node with the custom resource ``node_b``), both on 127.0.0.1, each in a new session
(``start_new_session``), and stops them itself, even on failure: every process of those two sessions or naming
their temp dirs gets SIGTERM, then SIGKILL. Never ``ray stop`` (it would stop other users' Ray on this machine).
The nodes and the test's drivers run with a private ``HOME`` (``cluster.env``), so that a ``~/.ray/auth_token`` of
another Ray user of this machine does not switch on token authentication. Health checks are shortened so that a
killed node is declared dead within a few seconds. Every address the test passes is 127.0.0.1, but Ray 2.60 still
registers the nodes under the host's address and binds its gRPC servers on all interfaces.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from _s3 import free_port

RAY = str(Path(sys.executable).with_name("ray"))
FAST_HEALTH = {
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
    "RAY_USAGE_STATS_ENABLED": "0",
    # every Ray process takes 127.0.0.1 as its node address (Ray otherwise swaps a loopback --node-ip-address for
    # the host's interface address and listens there): the cluster stays on loopback
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    # no token auth: a local ray.init earlier in the session may have set RAY_AUTH_MODE=token in os.environ after
    # finding ~/.ray/auth_token, and the nodes run with a private HOME that has none
    "RAY_AUTH_MODE": "disabled",
}
#: `ray start` for the second node: that variable also makes `ray start` refuse to join a cluster, so this one
#: process lifts the refusal while keeping every address it hands the node on loopback
JOIN = (
    "import ray._private.ray_constants as c, ray._private.services as s; c.ENABLE_RAY_CLUSTER = True; "
    "s.resolve_ip_for_localhost = lambda host: host; s.get_node_ip_address = lambda address=None: '127.0.0.1'; "
    "s.node_ip_address_from_perspective = lambda address=None: '127.0.0.1'; "
    "from ray.scripts.scripts import main; main()"
)


@dataclass
class Cluster:
    address: str
    env: dict  # the environment the nodes run in (PYTHONPATH, thread limits)
    temp_dirs: list[str] = field(default_factory=list)
    sessions: list[int] = field(default_factory=list)
    home: str | None = None  # the private HOME of the nodes and drivers

    def pids(self, which: int | None = None) -> list[int]:
        """Live pids of all nodes (or node ``which``: 0 head, 1 worker): same session or naming its temp dir."""
        sids = self.sessions if which is None else [self.sessions[which]]
        dirs = self.temp_dirs if which is None else [self.temp_dirs[which]]
        out = []
        for p in Path("/proc").iterdir():
            if not p.name.isdigit() or int(p.name) == os.getpid():
                continue
            try:
                sid = os.getsid(int(p.name))
                cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                state = (p / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, ProcessLookupError, IndexError):
                continue
            if state != "Z" and (sid in sids or any(d in cmd for d in dirs)):
                out.append(int(p.name))
        return out

    def raylet_pid(self, which: int) -> int:
        """The pid of node ``which``'s raylet."""
        for pid in self.pids(which):
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
            if cmd.endswith(b"/raylet"):
                return pid
        raise RuntimeError(f"no raylet for node {which}")

    def kill(self, which: int | None = None) -> None:
        """SIGKILL every process of node ``which`` (or of both)."""
        for pid in self.pids(which):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.time() + 5
        while self.pids() and time.time() < deadline:
            time.sleep(0.2)
        self.kill()
        for d in [*self.temp_dirs, self.home]:
            if d:
                shutil.rmtree(d, ignore_errors=True)


def _start(args: list[str], env: dict, cluster: Cluster, temp_dir: str, join: bool = False) -> None:
    cluster.temp_dirs.append(temp_dir)
    ray = [sys.executable, "-c", JOIN] if join else [RAY]
    proc = subprocess.Popen(
        [*ray, "start", *args, "--temp-dir", temp_dir, "--disable-usage-stats"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    cluster.sessions.append(proc.pid)
    try:
        out, _ = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise RuntimeError("ray start did not finish in 90 s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"ray start failed: {out.decode(errors='replace')[-2000:]}")


def _ports() -> list[str]:
    names = ("--node-manager-port", "--object-manager-port", "--metrics-export-port", "--runtime-env-agent-port")
    names += ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port")
    return [a for n in names for a in (n, str(free_port()))]


@contextlib.contextmanager
def two_node_cluster(pythonpath: list[str], extra_env: dict | None = None) -> Iterator[Cluster]:
    """Yield a started two-node cluster (head: 1 CPU; worker: 1 CPU and resource ``node_b``), its nodes and
    drivers in this environment plus ``extra_env`` (e.g. the AWS variables of a moto server)."""
    env = {**os.environ, **FAST_HEALTH, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **(extra_env or {})}
    env["PYTHONPATH"] = os.pathsep.join([*pythonpath, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("RAY_ADDRESS", None)
    home = tempfile.mkdtemp(prefix="ray-home-")  # a private HOME: no ~/.ray/auth_token of other Ray users here
    env["HOME"] = home
    port = free_port()
    cluster = Cluster(f"127.0.0.1:{port}", env, home=home)
    try:
        head = tempfile.mkdtemp(prefix="ray-head-")
        _start(
            ["--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "1", "--num-gpus", "0"]
            + ["--include-dashboard=false", "--dashboard-port", str(free_port()), *_ports()],
            env,
            cluster,
            head,
        )
        worker = tempfile.mkdtemp(prefix="ray-node-b-")
        _start(
            ["--address", cluster.address, "--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--num-gpus", "0"]
            + ["--resources", '{"node_b": 1}', *_ports()],
            env,
            cluster,
            worker,
            join=True,
        )
        yield cluster
    finally:
        cluster.stop()
