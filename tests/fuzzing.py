"""What the fuzz tests (tests/test_fuzz_*.py) share: how many inputs a surface gets, and a record of the outcomes.

A fuzz test feeds one input surface (image bytes, metadata files, COCO JSON, config overrides, checkpoints, HTTP
requests) with inputs drawn by Hypothesis. The only outcomes allowed are a result or the surface's documented
error (a one-line message, an HTTP status); anything else fails the test, and Hypothesis shrinks the input.

In the test suite each surface gets a bounded number of inputs (`ci`); scripts/fuzz.py runs a long campaign by
setting CAPTIONER_FUZZ_EXAMPLES (inputs per surface, times the surface's `weight`) and CAPTIONER_FUZZ_LOG (a
JSON-lines file that every input's outcome is appended to), then prints what was tried and what went wrong.

`attempt` runs one input under a time limit (CAPTIONER_FUZZ_INPUT_SECONDS, default 20): an input that takes
longer fails as a HangError, so a loop that never ends, or a decode that takes minutes, is a finding like a
crash. One stuck in C code past twice the limit ends the process (exit status 1) after faulthandler has written
every thread's traceback to HANG_FILE (pytest's capture would lose it); in a campaign that is CAPTIONER_FUZZ_LOG +
".hang", and each input is first written to CAPTIONER_FUZZ_LOG + ".input", so the one that hung is left there.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import signal
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import TypeVar

from hypothesis import HealthCheck, settings

_counts: Counter = Counter()


def fuzz_settings(ci: int, weight: float = 1.0) -> settings:
    """Hypothesis settings for one surface: `ci` inputs in the test suite; in a campaign
    CAPTIONER_FUZZ_EXAMPLES x weight (image bytes weigh 5: the campaign gives them five times the inputs)."""
    campaign = os.environ.get("CAPTIONER_FUZZ_EXAMPLES")
    examples = round(int(campaign) * weight) if campaign else ci
    return settings(
        max_examples=examples,
        deadline=None,  # a decode or a model call may take a while on a loaded machine; hangs are timed apart
        database=None,  # the suite stays hermetic: no .hypothesis folder
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
        derandomize=not campaign,  # the same inputs on every suite run; a campaign explores
    )


def record(surface: str, outcome: str) -> None:
    """Count one input of a surface and what became of it ("result", or the documented error's kind); in a
    campaign, also append it to CAPTIONER_FUZZ_LOG."""
    _counts[surface, outcome] += 1
    path = os.environ.get("CAPTIONER_FUZZ_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as log:
            log.write(json.dumps({"surface": surface, "outcome": outcome}) + "\n")


INPUT_SECONDS = float(os.environ.get("CAPTIONER_FUZZ_INPUT_SECONDS", "20"))
_LOG = os.environ.get("CAPTIONER_FUZZ_LOG")
HANG_FILE = _LOG + ".hang" if _LOG else os.path.join(tempfile.gettempdir(), "captioner-fuzz.hang")
_hang_output = None  # HANG_FILE, opened (and emptied) by the first input

T = TypeVar("T")


class HangError(Exception):
    """One input took longer than the per-input limit: a hang, or work out of all proportion to the input."""


@contextlib.contextmanager
def time_limit(seconds: float = INPUT_SECONDS) -> Iterator[None]:
    """Fail with HangError when the block runs longer than `seconds`: interrupted by SIGALRM where Python code loops
    (main thread), and checked when the block ends where the time went in C code that cannot be interrupted."""

    def interrupt(signum, frame):
        raise HangError(f"interrupted after {seconds:g} s (the per-input limit)")

    alarm = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
    if alarm:
        previous = signal.signal(signal.SIGALRM, interrupt)
        signal.setitimer(signal.ITIMER_REAL, seconds)
    global _hang_output
    if _hang_output is None:
        _hang_output = open(HANG_FILE, "w")  # noqa: SIM115 - open for the process's life: faulthandler writes to it
    faulthandler.dump_traceback_later(2 * seconds, exit=True, file=_hang_output)  # where SIGALRM cannot interrupt
    start = time.perf_counter()
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        if alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    elapsed = time.perf_counter() - start
    if elapsed > seconds:  # also where the code under test swallowed the HangError (an `except Exception`)
        raise HangError(f"took {elapsed:.1f} s, above the per-input limit of {seconds:g} s")


def attempt(
    surface: str,
    call: Callable[[], T],
    allowed: tuple[type[Exception], ...],
    seconds: float = INPUT_SECONDS,
    sample: bytes | str | None = None,
) -> tuple[T | None, Exception | None]:
    """Run one input of a surface: (its result, None) or (None, the allowed error it raised), recorded as
    "result" or the error's class name. Any other exception, and a HangError, is recorded as "unexpected" and raised
    for Hypothesis to shrink. `sample`: the input as bytes or text, written beside a campaign's log first. One input
    at a time: faulthandler's timer is one for the process, and SIGALRM only reaches the main thread."""
    log = os.environ.get("CAPTIONER_FUZZ_LOG")
    if log and sample is not None:
        with open(log + ".input", "wb") as file:
            file.write(sample if isinstance(sample, bytes) else sample.encode("utf-8", "surrogatepass"))
    try:
        with time_limit(seconds):
            try:
                result = call()
            except allowed as error:
                outcome: tuple = (None, error)
            else:
                outcome = (result, None)
    except Exception:
        record(surface, "unexpected")
        raise
    record(surface, "result" if outcome[1] is None else type(outcome[1]).__name__)
    return outcome


def one_line(error: Exception, *names: str) -> str:
    """The message of an allowed error, checked: one line, not empty, naming each of `names` (the file, the
    field); returned for further checks."""
    message = str(error)
    assert message.strip(), f"{type(error).__name__} with an empty message"
    assert len(message.splitlines()) == 1, f"{type(error).__name__} of more than one line: {message!r}"
    for name in names:
        assert name in message, f"{type(error).__name__} does not name {name!r}: {message!r}"
    return message
