"""Helpers shared by the web tests and scripts/serve_benchmark.py: a server in a thread or a process, a browser,
a request made by calling the app directly, and a load of concurrent requests."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# Flags for a closed network (no background connections) and a root user (no sandbox), as Debian's chromium needs.
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists() and not shutil.which(Path(path).name):
            return f"{path} is missing (Debian packages chromium and chromium-driver; scripts/test.sh installs them)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    return None


def chromium(width: int = 1200, height: int = 900):
    """A headless Debian chromium driven by selenium through Debian's chromedriver (nothing downloaded)."""
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium manager must not look for drivers on the network
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    for flag in [*CHROMIUM_FLAGS, f"--window-size={width},{height}"]:
        options.add_argument(flag)
    service = Service(CHROMEDRIVER if Path(CHROMEDRIVER).exists() else shutil.which("chromedriver"))
    return webdriver.Chrome(service=service, options=options)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ThreadServer:
    """An app of create_app served as `captioner serve` serves it (its uvicorn settings: timeouts, connection
    cap), in a thread of this process, on a free port of 127.0.0.1."""

    def __init__(self, app):
        import uvicorn

        from captioner.serve import server_config

        self.server = uvicorn.Server(server_config(app, "127.0.0.1", free_port()))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.server.config.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


class ProcessServer:
    """`captioner serve` as its own process (what a user runs), on a free port; its peak memory is readable."""

    def __init__(self, checkpoint: str | Path, *extra: str):
        self.port = free_port()
        self.args = [sys.executable, "-m", "captioner", "serve", "--checkpoint", str(checkpoint), "--port"]
        self.args += [str(self.port), "--device", "cpu", *extra]

    def __enter__(self) -> ProcessServer:
        self.process = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 120
        while True:
            try:
                status, _ = request("127.0.0.1", self.port, "GET", "/api/health")
                if status == 200:
                    return self
            except OSError:
                pass
            if self.process.poll() is not None:
                raise RuntimeError(f"captioner serve exited: {self.process.stdout.read()}")
            if time.monotonic() > deadline:
                raise RuntimeError("captioner serve did not answer within 120 s")
            time.sleep(0.1)

    def peak_memory_mb(self, field: str = "VmHWM") -> float:
        """The process's peak resident memory (VmHWM; VmRSS: now), in MiB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no {field} in /proc")

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def request(host: str, port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, dict]:
    connection = http.client.HTTPConnection(host, port, timeout=120)
    try:
        connection.request(method, path, body=body, headers={"Content-Type": "application/octet-stream"})
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


async def asgi(
    app,
    method: str,
    target: str,
    body: bytes | list[bytes] = b"",
    headers: list[tuple[str, str]] | None = None,
    reads: list[int] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request made by calling the ASGI app directly (no server between): the status, the response headers
    (names lower-case) and the body. `body` is sent as given, in pieces if a list; `headers` default to a Host
    of localhost; the client is reported gone once the whole body was read. Each time the app asks for the
    body, the number of bytes handed to it is appended to `reads`."""
    path, _, query = target.partition("?")
    raw = [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in (headers if headers is not None else [("host", "localhost")])
    ]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("utf-8"),
        "query_string": query.encode("latin-1"),
        "root_path": "",
        "headers": raw,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    pieces = list(body) if isinstance(body, list) else [body]
    messages = [
        {"type": "http.request", "body": piece, "more_body": i < len(pieces) - 1} for i, piece in enumerate(pieces)
    ]
    start, parts = {}, []

    async def receive() -> dict:
        await asyncio.sleep(0)
        message = messages.pop(0) if messages else {"type": "http.disconnect"}
        if reads is not None:
            reads.append(len(message.get("body", b"")))
        return message

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
        elif message["type"] == "http.response.body":
            parts.append(message.get("body", b""))

    await app(scope, receive, send)
    names = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in start.get("headers", [])}
    return start["status"], names, b"".join(parts)


@dataclass
class Load:
    requests: int
    statuses: dict[int, int]
    wrong: list[str]  # answers that were not what the file called for
    p50_ms: float
    p95_ms: float
    seconds: float


def load(port: int, files: list[tuple[str, bytes, str | None]], count: int, concurrency: int) -> Load:
    """`count` POST /api/caption requests, `concurrency` at a time, cycling through files (name, bytes, the
    error expected or None for a picture): the statuses, the latencies and every answer that was wrong."""
    latencies, statuses, wrong = [], {}, []
    lock = threading.Lock()

    def one(i: int) -> None:
        name, data, expected = files[i % len(files)]
        start = time.perf_counter()
        status, answer = request("127.0.0.1", port, "POST", f"/api/caption?name={name}", data)
        elapsed = time.perf_counter() - start
        with lock:
            latencies.append(elapsed)
            statuses[status] = statuses.get(status, 0) + 1
            if expected is None and (status != 200 or not answer.get("words")):
                wrong.append(f"{name}: {status} {answer}")
            if expected is not None and (status != 422 or answer.get("error") != expected):
                wrong.append(f"{name}: {status} {answer}, expected 422 {expected!r}")

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(count)))
    seconds = time.perf_counter() - start
    quantiles = statistics.quantiles(latencies, n=20)
    return Load(count, statuses, wrong, statistics.median(latencies) * 1000, quantiles[18] * 1000, seconds)
