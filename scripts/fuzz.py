"""A fuzz campaign over every input surface: the fuzz tests (tests/test_fuzz_*.py) with many more inputs.

    python scripts/fuzz.py                              # 20,000 inputs per surface (image bytes: 100,000)
    python scripts/fuzz.py --examples 300 images coco   # a short run of two surfaces
    CAPTIONER_FUZZ_EXAMPLES=2000 python scripts/fuzz.py --cap 600

Each test file runs in its own pytest process with CAPTIONER_FUZZ_EXAMPLES (inputs per surface, times the
surface's weight: image bytes weigh 5), CAPTIONER_FUZZ_LOG (every input's outcome, one JSON line each) and
CAPTIONER_FUZZ_INPUT_SECONDS (the per-input limit: an input that takes longer is a hang) set, and without
Hypothesis's fixed seed, so every campaign draws new inputs. A file that runs past --cap seconds is stopped (its
tracebacks are printed). At the end a table says, per surface, how many inputs were tried, what became of them
(a result, or each documented error), and how many were unexpected; below it, every failing test with the input
Hypothesis shrank it to. The exit status is 1 if anything unexpected happened (an exception, a hang, a stop at
the cap), else 0.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = {  # surface argument -> its test file
    "images": "tests/test_fuzz_images.py",
    "metadata": "tests/test_fuzz_metadata.py",
    "coco": "tests/test_fuzz_coco.py",
    "config": "tests/test_fuzz_config.py",
    "checkpoint": "tests/test_fuzz_checkpoint.py",
    "serve": "tests/test_fuzz_serve.py",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="surfaces: " + ", ".join(FILES) + " (default: all whose test file exists)",
    )
    parser.add_argument("surfaces", nargs="*", metavar="SURFACE", help="which to fuzz: " + ", ".join(FILES))
    parser.add_argument(
        "--examples",
        type=int,
        default=int(os.environ.get("CAPTIONER_FUZZ_EXAMPLES", "20000")),
        help="inputs per surface, times its weight (default: $CAPTIONER_FUZZ_EXAMPLES or 20000)",
    )
    parser.add_argument("--cap", type=float, default=4 * 3600, help="seconds one test file may run (default 14400)")
    parser.add_argument(
        "--input-seconds", type=float, default=20.0, help="seconds one input may take before it is a hang (default 20)"
    )
    parser.add_argument("--logs", type=Path, help="folder for the outcome logs (default: a new temporary folder)")
    args = parser.parse_args(argv)
    unknown = [name for name in args.surfaces if name not in FILES]
    if unknown:
        parser.error(f"unknown surface {unknown[0]!r}; choose from {', '.join(FILES)}")
    return args


def run_file(name: str, path: str, args: argparse.Namespace, logs: Path) -> dict:
    """Run one test file as a campaign: its pytest output, return code, seconds, and whether it hit the cap."""
    log = logs / f"{name}.jsonl"
    log.unlink(missing_ok=True)
    env = dict(
        os.environ,
        CAPTIONER_FUZZ_EXAMPLES=str(args.examples),
        CAPTIONER_FUZZ_LOG=str(log),
        CAPTIONER_FUZZ_INPUT_SECONDS=str(args.input_seconds),
        PYTHONFAULTHANDLER="1",
    )
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfExX", "--tb=short", path]
    start = time.monotonic()
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    )
    capped = False
    try:
        output, _ = process.communicate(timeout=args.cap)
    except subprocess.TimeoutExpired:
        capped = True
        process.send_signal(signal.SIGABRT)  # faulthandler prints where every thread is
        try:
            output, _ = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
    return {
        "output": output,
        "returncode": process.returncode,
        "seconds": time.monotonic() - start,
        "capped": capped,
        "log": log,
    }


ERROR = re.compile(r"[\w.]*(?:Error|Exception|Exit)\b:? .*")  # the exception a failing case raised
FAILING = re.compile(r"^(?P<prefix>(?:E|\s*\|)?\s*)(?:Failing test case:|Falsifying example:)")


def failures(output: str) -> list[str]:
    """Each failing test's summary line, and the input Hypothesis shrank it to (its call and its draws)."""
    found = [line for line in output.splitlines() if line.startswith(("FAILED ", "ERROR "))]
    lines = output.splitlines()
    for i, line in enumerate(lines):
        match = FAILING.match(line)
        if not match:
            continue
        width = len(match["prefix"])  # pytest puts "E   " before a failure's lines, "|" before a group's
        error = next((ERROR.search(lines[j]) for j in range(i - 1, max(-1, i - 4), -1) if ERROR.search(lines[j])), None)
        block = ([error[0]] if error else []) + [line[width:]]
        for following in lines[i + 1 : i + 200]:
            text = following[width:]
            if not text.strip() or not text.startswith((" ", ")", "Draw ")):
                break
            block.append(text)
        found.append("\n".join(text[:300] for text in block[:40]))
    if "Fatal Python error" in output:  # a crash, or our SIGABRT at the cap: faulthandler says where
        start = output.find("Fatal Python error")
        found.append("the process ended; where it was:\n" + "\n".join(output[start:].splitlines()[:40]))
    return found


def outcomes(log: Path) -> dict[str, Counter]:
    """{surface: Counter(outcome)} from a campaign log."""
    counts: dict[str, Counter] = defaultdict(Counter)
    if log.is_file():
        with open(log, encoding="utf-8") as lines:
            for line in lines:
                entry = json.loads(line)
                counts[entry["surface"]][entry["outcome"]] += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    chosen = args.surfaces or [name for name, path in FILES.items() if (ROOT / path).is_file()]
    logs = args.logs or Path(tempfile.mkdtemp(prefix="captioner-fuzz-"))
    logs.mkdir(parents=True, exist_ok=True)
    print(f"fuzz campaign: {args.examples} inputs per surface (times its weight), logs in {logs}", flush=True)
    rows, problems, known = [], [], []
    for name in chosen:
        path = FILES[name]
        if not (ROOT / path).is_file():
            problems.append(f"{name}: {path} does not exist")
            continue
        print(f"  {name}: {path} ...", end=" ", flush=True)
        run = run_file(name, path, args, logs)
        counts = outcomes(run["log"])
        status = "ok" if run["returncode"] == 0 else "capped" if run["capped"] else "FAILED"
        print(f"{status} in {run['seconds']:.0f} s", flush=True)
        for surface, counter in sorted(counts.items()):
            rows.append((surface, counter, run["seconds"], status))
        known += [line for line in run["output"].splitlines() if line.startswith(("XFAIL ", "XPASS "))]
        found = failures(run["output"])
        hang = Path(str(run["log"]) + ".hang")
        if hang.is_file() and hang.stat().st_size:  # tests/fuzzing.py: an input stuck past twice its limit
            found.append(
                "an input hung and ended the process; where it was:\n" + "\n".join(hang.read_text().splitlines()[:40])
            )
        if run["returncode"] != 0:
            if not found:  # a failure the parser did not recognise: show the end of pytest's output
                found = ["\n".join(run["output"].splitlines()[-30:])]
            if Path(str(run["log"]) + ".input").is_file():
                found.append(f"the last input it was given: {run['log']}.input")
            problems.append(f"{name} ({path}), {status}:\n" + "\n".join("    " + f for f in found))
    print()
    header = ("surface", "inputs", "outcomes", "unexpected", "seconds", "status")
    table = [
        (
            surface,
            str(sum(counter.values())),
            ", ".join(f"{kind} {n}" for kind, n in counter.most_common() if kind != "unexpected"),
            str(counter["unexpected"]),
            f"{seconds:.0f}",
            status,
        )
        for surface, counter, seconds, status in rows
    ]
    widths = [max(len(r[i]) for r in [header, *table]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *table]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    if known:  # tests marked xfail: faults found and reported, fixed elsewhere (XPASS: the fix is here)
        print("\nknown faults (xfail; XPASS means fixed):")
        for line in known:
            print("    " + line)
    if problems:
        print("\nunexpected outcomes:")
        for problem in problems:
            print(problem)
        return 1
    print("\nno unexpected outcome")
    return 0


if __name__ == "__main__":
    sys.exit(main())
