"""Latency of `captioner serve` against one `captioner caption` process per picture, a load of good and broken
uploads, and the screenshots of docs/web.md (the report and the served page, in headless chromium); with
--hostile, the server under a hostile load instead.

    .venv/bin/python scripts/serve_benchmark.py                      # the demo's model on data/photos
    .venv/bin/python scripts/serve_benchmark.py --checkpoint runs/x/best.pt --photos my_pictures/
    .venv/bin/python scripts/serve_benchmark.py --hostile            # idle connections, large canvases, a flood

Writes benchmarks/serve.json (--hostile: benchmarks/serve_hostile.json) and prints a Markdown table;
--screenshots DIR also draws report.png and serve.png.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.servers import ProcessServer, chromium, load, request  # noqa: E402

BROKEN = [
    ("notes.txt", b"these are notes, not a picture\n", "notes.txt: not an image (unrecognised file format)"),
    ("empty.jpg", b"", "empty.jpg: empty file, not an image"),
]


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def one_process_per_picture(checkpoint: str, photos: list[Path], n_best: int) -> list[float]:
    """Seconds of `captioner caption PHOTO` run as its own process (Python, torch and the model loaded each time)."""
    seconds = []
    for photo in photos:
        start = time.perf_counter()
        command = [sys.executable, "-m", "captioner", "caption", str(photo), "--checkpoint", checkpoint]
        subprocess.run([*command, "--n-best", str(n_best), "--device", "cpu"], check=True, capture_output=True)
        seconds.append(time.perf_counter() - start)
    return seconds


def screenshots(checkpoint: str, photos: list[Path], port: int, out: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    out.mkdir(parents=True, exist_ok=True)
    browser = chromium(1200, 820)
    try:
        with tempfile.TemporaryDirectory() as folder:
            report = Path(folder) / "report.html"
            command = [sys.executable, "-m", "captioner", "caption", *map(str, photos), "--checkpoint", checkpoint]
            subprocess.run([*command, "--n-best", "3", "--html", str(report)], check=True, capture_output=True)
            browser.get(report.as_uri())
            card = browser.find_elements("css selector", ".cap-card")[0]
            words = card.find_elements("css selector", ".cap-caption .cap-word")
            ActionChains(browser).move_to_element(words[-1]).perform()
            time.sleep(0.3)
            browser.save_screenshot(str(out / "report.png"))
        browser.get(f"http://127.0.0.1:{port}/")
        browser.find_element("id", "file").send_keys(str(photos[2].resolve()))  # chelsea, the cat
        deadline = time.monotonic() + 60
        while not browser.find_elements("css selector", ".cap-card") and time.monotonic() < deadline:
            time.sleep(0.1)
        card = browser.find_element("css selector", ".cap-card")
        words = card.find_elements("css selector", ".cap-caption .cap-word")
        ActionChains(browser).move_to_element(words[-1]).perform()
        time.sleep(0.3)
        browser.save_screenshot(str(out / "serve.png"))
    finally:
        browser.quit()


def large_canvas(side: int) -> bytes:
    """A side x side PNG of a few lines on white: a small file that decodes to side x side pixels."""
    from PIL import Image, ImageDraw

    picture = Image.new("RGB", (side, side), "white")
    draw = ImageDraw.Draw(picture)
    for i in range(0, side, side // 8):
        draw.line([(0, i), (side, side - i)], fill=(30, 60, 200), width=9)
    data = io.BytesIO()
    picture.save(data, format="PNG", optimize=True)
    return data.getvalue()


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def idle_connections(port: int, count: int) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]


def closed_within(connections: list[socket.socket], since: float, limit: float) -> list[float]:
    """Seconds from `since` until the server closed each connection (inf: still open after `limit`)."""
    selector = selectors.DefaultSelector()
    for connection in connections:
        selector.register(connection, selectors.EVENT_READ)
    times = {}
    while len(times) < len(connections) and time.monotonic() - since < limit:
        for key, _ in selector.select(timeout=0.1):
            try:
                data = key.fileobj.recv(1)
            except ConnectionResetError:
                data = b""
            if not data:
                times[key.fileobj] = time.monotonic() - since
                selector.unregister(key.fileobj)
    for connection in connections:
        connection.close()
    return [times.get(c, float("inf")) for c in connections]


def send_all(port: int, bodies: list[tuple[str, bytes]], concurrency: int) -> tuple[dict[int, int], list[float]]:
    """POST each body (name, bytes), `concurrency` at a time: the statuses and the seconds each took."""
    statuses, seconds, lock = {}, [], threading.Lock()

    def one(item):
        name, data = item
        start = time.perf_counter()
        try:
            status, _ = request("127.0.0.1", port, "POST", f"/api/caption?name={name}", data)
        except OSError:
            status = 0  # the connection failed
        with lock:
            statuses[status] = statuses.get(status, 0) + 1
            seconds.append(time.perf_counter() - start)

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, bodies))
    return statuses, seconds


def flood(checkpoint: str, count: int, megabytes: int, queue: int) -> dict:
    """`count` concurrent uploads of `megabytes` MiB each (not pictures) to a server with --queue `queue`: its
    resident memory before and at its peak."""
    with ProcessServer(checkpoint, "--queue", str(queue), "--max-connections", str(count + 10)) as server:
        before = server.peak_memory_mb("VmRSS")
        body = os.urandom(megabytes * 1024 * 1024)
        statuses, seconds = send_all(server.port, [(f"{i}.bin", body) for i in range(count)], concurrency=count)
        return {
            "uploads": count,
            "mib_each": megabytes,
            "queue": queue,
            "statuses": statuses,
            "rss_before_mib": before,
            "peak_mib": server.peak_memory_mb(),
            "seconds": sum(seconds),
        }


def hostile(args, good: list[tuple[str, bytes, None]]) -> int:
    """The server unloaded, then under a hostile load: `--idle` connections that send nothing, `--large` PNGs of
    a large canvas (`--side` pixels a side, under the 40 megapixel limit) sent 6 at a time, among the same
    ordinary requests; then a flood of large uploads. Figures: ordinary p95, memory, idle connections closed."""
    canvas = large_canvas(args.side)
    report = {"machine": f"{cpu_name()}, {len(os.sched_getaffinity(0))} cores", "checkpoint": args.checkpoint}
    with ProcessServer(args.checkpoint, "--idle-timeout", str(args.idle_timeout)) as server:
        load(server.port, good, count=len(good), concurrency=1)  # warm-up: first calls pay for lazy set-up
        quiet = load(server.port, good, count=args.requests, concurrency=4)
        rss, files = server.peak_memory_mb("VmRSS"), open_files(server.process.pid)
        quiet_peak = server.peak_memory_mb()
        idle = idle_connections(server.port, args.idle)
        opened, closed = time.monotonic(), []
        watcher = threading.Thread(target=lambda: closed.extend(closed_within(idle, opened, args.idle_timeout + 30)))
        watcher.start()
        time.sleep(min(1.0, args.idle_timeout / 2))  # accepted by now, not yet timed out
        files_idle = open_files(server.process.pid)
        large = {}

        def send_large():
            bodies = [(f"canvas{i}.png", canvas) for i in range(args.large)]
            start = time.perf_counter()
            large["statuses"], large["seconds"] = send_all(server.port, bodies, concurrency=6)
            large["wall_s"] = time.perf_counter() - start

        sender = threading.Thread(target=send_large)
        sender.start()
        busy = load(server.port, good, count=args.requests, concurrency=4)
        sender.join()
        watcher.join()
        peak, after = server.peak_memory_mb(), server.peak_memory_mb("VmRSS")
        report["unloaded"] = {"requests": quiet.requests, "p50_ms": quiet.p50_ms, "p95_ms": quiet.p95_ms}
        report["loaded"] = {
            "requests": busy.requests,
            "statuses": busy.statuses,
            "wrong": busy.wrong,
            "p50_ms": busy.p50_ms,
            "p95_ms": busy.p95_ms,
        }
        report["large"] = {
            "count": args.large,
            "side": args.side,
            "bytes": len(canvas),
            "statuses": large["statuses"],
            "median_s": statistics.median(large["seconds"]),
            "all_done_after_s": large["wall_s"],
            "ordinary_load_s": busy.seconds,
        }
        report["idle"] = {
            "count": args.idle,
            "timeout_s": args.idle_timeout,
            "closed_after_s_max": max(closed),
            "open_files_before_during_after": [files, files_idle, open_files(server.process.pid)],
        }
        report["memory_mib"] = {
            "rss_unloaded": rss,
            "peak_unloaded": quiet_peak,
            "peak_loaded": peak,
            "rss_after": after,
        }
    report["flood"] = flood(args.checkpoint, count=100, megabytes=4, queue=4)
    Path(args.output).write_text(json.dumps(report, indent=1) + "\n")
    ratio = busy.p95_ms / quiet.p95_ms
    print(f"{report['machine']}; {args.checkpoint}; beam 3, 3 best; ordinary pictures 4 at a time\n")
    print("| load | requests | p50 | p95 |\n|---|---|---|---|")
    print(f"| unloaded | {quiet.requests} | {quiet.p50_ms:.0f} ms | {quiet.p95_ms:.0f} ms |")
    label = f"{args.idle} idle connections, {args.large} PNGs of {args.side} x {args.side} ({len(canvas):,} bytes)"
    print(f"| {label} | {busy.requests} | {busy.p50_ms:.0f} ms | {busy.p95_ms:.0f} ms ({ratio:.2f} x) |")
    print(
        f"\nordinary statuses {busy.statuses}, wrong {len(busy.wrong)}, in {busy.seconds:.1f} s; large canvases: "
        f"{large['statuses']}, each {report['large']['median_s']:.1f} s (median), all in {large['wall_s']:.1f} s"
    )
    print(f"idle connections closed after at most {max(closed):.1f} s (timeout {args.idle_timeout:g} s)")
    print(f"open files before, with the idle connections, after: {report['idle']['open_files_before_during_after']}")
    print(
        f"resident memory: {rss:.0f} MiB unloaded (peak {quiet_peak:.0f}), peak under the load {peak:.0f} MiB, "
        f"{after:.0f} MiB after it"
    )
    f = report["flood"]
    print(
        f"flood: {f['uploads']} concurrent uploads of {f['mib_each']} MiB, --queue {f['queue']}: statuses "
        f"{f['statuses']}, resident {f['rss_before_mib']:.0f} MiB before, peak {f['peak_mib']:.0f} MiB"
    )
    return 1 if busy.wrong or any(status >= 500 or status == 0 for status in busy.statuses) else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="runs/stamps/best.pt")
    parser.add_argument("--photos", default="data/photos", help="folder of pictures (default: data/photos)")
    parser.add_argument("--requests", type=int, default=200, help="requests of the load at concurrency 8")
    parser.add_argument("--processes", type=int, default=5, help="pictures captioned one process each")
    parser.add_argument("--output", default="benchmarks/serve.json")
    parser.add_argument("--screenshots", help="also draw report.png and serve.png into this folder")
    parser.add_argument("--hostile", action="store_true", help="the server under a hostile load (see hostile())")
    parser.add_argument("--idle", type=int, default=50, help="--hostile: idle connections")
    parser.add_argument("--large", type=int, default=24, help="--hostile: large-canvas PNGs")
    parser.add_argument("--side", type=int, default=6000, help="--hostile: their side in pixels")
    parser.add_argument("--idle-timeout", type=float, default=5.0, help="--hostile: the server's --idle-timeout")
    args = parser.parse_args()
    photos = sorted(p for p in Path(args.photos).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not photos:
        parser.error(f"no pictures in {args.photos} (captioner data photos makes some)")
    good = [(p.name, p.read_bytes(), None) for p in photos]
    if args.hostile:
        if args.output == "benchmarks/serve.json":
            args.output = "benchmarks/serve_hostile.json"
        return hostile(args, good)

    with ProcessServer(args.checkpoint) as server:
        load(server.port, good, count=len(good), concurrency=1)  # warm-up: first calls pay for lazy set-up
        single = load(server.port, good, count=2 * len(good), concurrency=1)
        mixed = load(server.port, good + BROKEN, count=args.requests, concurrency=8)
        peaks = [server.peak_memory_mb()]
        for _ in range(2):  # two loads of good pictures only (full batches): is the peak still rising?
            busy = load(server.port, good, count=args.requests, concurrency=8)
            peaks.append(server.peak_memory_mb())
        if args.screenshots:
            screenshots(args.checkpoint, photos, server.port, Path(args.screenshots))
    processes = one_process_per_picture(args.checkpoint, photos[: args.processes], n_best=3)

    report = {
        "machine": f"{cpu_name()}, {len(__import__('os').sched_getaffinity(0))} cores",
        "checkpoint": args.checkpoint,
        "pictures": len(photos),
        "decoding": "beam 3, 3 best (the server's default)",
        "server_concurrency_1": {"requests": single.requests, "p50_ms": single.p50_ms, "p95_ms": single.p95_ms},
        "server_concurrency_8_good": {
            "requests": busy.requests,
            "p50_ms": busy.p50_ms,
            "p95_ms": busy.p95_ms,
            "pictures_per_s": busy.requests / busy.seconds,
        },
        "server_concurrency_8_mixed": {
            "requests": mixed.requests,
            "statuses": mixed.statuses,
            "wrong_answers": mixed.wrong,
            "p50_ms": mixed.p50_ms,
            "p95_ms": mixed.p95_ms,
        },
        "server_peak_memory_mib_after_each_load": peaks,
        "process_per_picture_s": {"runs": len(processes), "median": statistics.median(processes), "each": processes},
    }
    Path(args.output).write_text(json.dumps(report, indent=1) + "\n")
    print(f"{report['machine']}; {args.checkpoint}; {len(photos)} pictures, beam 3, 3 best\n")
    print("| how | requests | p50 | p95 |\n|---|---|---|---|")
    print(f"| server, concurrency 1 | {single.requests} | {single.p50_ms:.0f} ms | {single.p95_ms:.0f} ms |")
    print(f"| server, concurrency 8 | {busy.requests} | {busy.p50_ms:.0f} ms | {busy.p95_ms:.0f} ms |")
    label = "server, concurrency 8, 2 in 15 files broken"
    print(f"| {label} | {mixed.requests} | {mixed.p50_ms:.0f} ms | {mixed.p95_ms:.0f} ms |")
    median = statistics.median(processes) * 1000
    print(f"| one `captioner caption` process per picture | {len(processes)} | {median:.0f} ms | |")
    peak_text = ", ".join(f"{p:.0f}" for p in peaks)
    print(f"\nstatuses of the mixed load: {mixed.statuses}; wrong answers: {len(mixed.wrong)}")
    print(f"server peak memory after each load of {args.requests}: {peak_text} MiB")
    print(f"concurrency 8: {busy.requests / busy.seconds:.1f} pictures/s")
    return 1 if mixed.wrong or single.wrong or busy.wrong else 0


if __name__ == "__main__":
    sys.exit(main())
