"""Redis servers of a test's own, on free local ports, which the test may empty or stop.

The shared Redis (127.0.0.1:6379) serves every other test, so a test that runs ``FLUSHALL``
or stops Redis starts its own: ``redis-server`` without persistence in a temporary
directory. ``PrivateRedisCluster`` starts three such servers with ``--cluster-enabled yes``
and joins them with ``redis-cli --cluster create`` (three masters, no replicas).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.helpers import free_port

CLUSTER_NODE = ("--cluster-enabled", "yes", "--cluster-node-timeout", "2000")


class PrivateRedis:
    """One ``redis-server`` on a free port; ``url`` reaches it."""

    def __init__(self, *extra: str) -> None:
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="aj-private-redis-"))
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._extra = extra
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._proc = subprocess.Popen(
            [
                "redis-server",
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.root),
                *self._extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while self.cli("ping").strip() != "PONG":
            if time.monotonic() > deadline or self._proc.poll() is not None:
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.05)  # wait-ok: polling the server's start

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            ["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return done.stdout

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


class PrivateRedisCluster:
    """Three cluster-enabled servers joined into one cluster; ``url`` is the
    ``redis+cluster://`` URL the redis transport takes (any node: the client finds the
    others)."""

    def __init__(self) -> None:
        self.nodes = [
            # The cluster bus on a free port of its own (by default it is the port + 10000).
            PrivateRedis(*CLUSTER_NODE, "--cluster-port", str(free_port()))
            for _ in range(3)
        ]
        self.url = f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        made = subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{n.port}" for n in self.nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if made.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {made.stdout} {made.stderr}")
        deadline = time.monotonic() + 30
        while "cluster_state:ok" not in self.nodes[0].cli("cluster", "info"):
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not become ready")
            time.sleep(0.1)  # wait-ok: polling the cluster's state

    def close(self) -> None:
        for node in self.nodes:
            node.close()
