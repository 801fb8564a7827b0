"""What the fuzz tests (tests/test_fuzz_*.py) share: how many inputs a surface gets, and a record of the outcomes.

A fuzz test feeds one input surface (image bytes, metadata files, COCO JSON, config overrides, checkpoints, HTTP
requests) with inputs drawn by Hypothesis. The only outcomes allowed are a result or the surface's documented
error (a one-line message, an HTTP status); anything else fails the test, and Hypothesis shrinks the input.

In the test suite each surface gets a bounded number of inputs (`ci`); scripts/fuzz.py runs a long campaign by
setting CAPTIONER_FUZZ_EXAMPLES (inputs per surface, times the surface's `weight`) and CAPTIONER_FUZZ_LOG (a
JSON-lines file that every input's outcome is appended to), then prints what was tried and what went wrong.
"""

from __future__ import annotations

import json
import os
from collections import Counter

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
