"""Latency of `captioner serve` against one `captioner caption` process per picture, a load of good and broken
uploads, and the screenshots of docs/web.md (the report and the served page, in headless chromium).

    .venv/bin/python scripts/serve_benchmark.py                      # the demo's model on data/photos
    .venv/bin/python scripts/serve_benchmark.py --checkpoint runs/x/best.pt --photos my_pictures/

Writes benchmarks/serve.json and prints a Markdown table; --screenshots DIR also draws report.png and serve.png.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.servers import ProcessServer, chromium, load  # noqa: E402

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="runs/stamps/best.pt")
    parser.add_argument("--photos", default="data/photos", help="folder of pictures (default: data/photos)")
    parser.add_argument("--requests", type=int, default=200, help="requests of the load at concurrency 8")
    parser.add_argument("--processes", type=int, default=5, help="pictures captioned one process each")
    parser.add_argument("--output", default="benchmarks/serve.json")
    parser.add_argument("--screenshots", help="also draw report.png and serve.png into this folder")
    args = parser.parse_args()
    photos = sorted(p for p in Path(args.photos).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not photos:
        parser.error(f"no pictures in {args.photos} (captioner data photos makes some)")
    good = [(p.name, p.read_bytes(), None) for p in photos]

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
