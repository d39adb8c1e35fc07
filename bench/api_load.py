"""``POST /jobs`` on ``async-jobs api`` with PostgreSQL, against FastAPI's own floor on this
machine: the same server (uvicorn, one process) answering a route that returns a constant.

    python bench/api_load.py                       # 10 s per target, 32 connections
    python bench/api_load.py --seconds 20 --connections 64 --rounds 3

Both servers run as processes on free ports. The load comes from ``wrk`` when it is installed
(``apt install wrk``; keep-alive connections, each sending its next request as soon as the
last one answered), else from this process with httpx (slower: on two cores it can be the
bottleneck, which the output then says). Both targets share the machine's cores with the same
load generator; targets alternate per round. Prints requests/s and latency p50/p99 of each,
and the ratio ours / floor.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx

HERE = Path(__file__).resolve().parent
ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
DSN = "postgresql://postgres@127.0.0.1:5432/async_jobs_api_bench"
BODY = {"type": "echo", "payload": {"to": "a@b.c", "n": 1}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def server(argv: list[str], port: int, env: dict[str, str]) -> Iterator[str]:
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"server did not start: {proc.stderr.read() if proc.stderr else ''}"
                )
            time.sleep(0.1)  # wait-ok: start-up poll with a deadline
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def load(base: str, seconds: float, connections: int) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:
        stop_at = time.perf_counter() + seconds

        async def one_connection() -> None:
            nonlocal errors
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                answer = await client.post("/jobs", json=BODY)
                if answer.status_code != 201:
                    errors += 1
                latencies.append(time.perf_counter() - started)

        began = time.perf_counter()
        await asyncio.gather(*(one_connection() for _ in range(connections)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
        "errors": errors,
        "requests": len(latencies),
    }


def wrk_load(base: str, seconds: float, connections: int) -> dict[str, float]:
    script = (
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(json.dumps(BODY))}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as file:
        file.write(script)
    try:
        duration = f"-d{max(1, round(seconds))}s"
        argv = ["wrk", "-t2", f"-c{connections}", duration, "--latency", "-s", file.name]
        out = subprocess.run([*argv, f"{base}/jobs"], capture_output=True, text=True, check=True)
    finally:
        os.unlink(file.name)
    text = out.stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return {
        "requests_per_s": rate,
        "p50_ms": _ms(re.search(r"\s50%\s+([\d.]+\w+)", text).group(1)),  # type: ignore[union-attr]
        "p99_ms": _ms(re.search(r"\s99%\s+([\d.]+\w+)", text).group(1)),  # type: ignore[union-attr]
        "errors": int(errors.group(1)) if errors else 0,
    }


def _ms(value: str) -> float:
    number = float(re.match(r"[\d.]+", value).group(0))  # type: ignore[union-attr]
    unit = value[len(re.match(r"[\d.]+", value).group(0)) :]  # type: ignore[union-attr]
    return number * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


async def fresh_database() -> None:
    admin = await asyncpg.connect(ADMIN)
    try:
        await admin.execute("DROP DATABASE IF EXISTS async_jobs_api_bench WITH (FORCE)")
        await admin.execute("CREATE DATABASE async_jobs_api_bench")
    finally:
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNC_JOBS_")}
    env.update({"ASYNC_JOBS_DB_DSN": DSN, "PYTHONPATH": str(HERE)})
    results: dict[str, list[dict[str, float]]] = {"ours": [], "floor": []}
    for round_number in range(args.rounds):
        order = ["ours", "floor"] if round_number % 2 == 0 else ["floor", "ours"]
        for target in order:
            asyncio.run(fresh_database())
            port = free_port()
            argv = (
                [sys.executable, "-m", "async_jobs", "--log-level", "WARNING", "migrate"]
                if target == "ours"
                else []
            )
            if argv:
                subprocess.run(argv, env=env, check=True, capture_output=True)
                argv = [sys.executable, "-m", "async_jobs", "--log-level", "WARNING", "api",
                        "--port", str(port)]  # fmt: skip
            else:
                argv = [sys.executable, "-m", "uvicorn", "api_floor:app", "--port", str(port),
                        "--log-level", "warning", "--no-access-log"]  # fmt: skip
            with server(argv, port, env) as base:
                if shutil.which("wrk"):
                    wrk_load(base, 1.0, args.connections)  # warm up
                    result = wrk_load(base, args.seconds, args.connections)
                else:
                    asyncio.run(load(base, 1.0, args.connections))  # warm up
                    result = asyncio.run(load(base, args.seconds, args.connections))
            results[target].append(result)
            print(f"round {round_number + 1} {target}: {json.dumps(result)}", file=sys.stderr)
    summary = {
        target: {
            "requests_per_s": statistics.median(r["requests_per_s"] for r in runs),
            "p99_ms": statistics.median(r["p99_ms"] for r in runs),
            "p50_ms": statistics.median(r["p50_ms"] for r in runs),
            "errors": sum(r["errors"] for r in runs),
        }
        for target, runs in results.items()
    }
    summary["ratio_ours_over_floor"] = {
        "requests_per_s": summary["ours"]["requests_per_s"] / summary["floor"]["requests_per_s"]
    }
    summary["machine"] = {
        "load_generator": "wrk" if shutil.which("wrk") else "httpx (may be the bottleneck)",
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "connections": args.connections,
        "seconds": args.seconds,
        "rounds": args.rounds,
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
