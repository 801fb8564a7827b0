"""Tunes in ABC notation: splitting a file into tunes, a tune's meter, and whether it parses and keeps its
meter, checked with music21 (the music extra); the folk data (data/folk.py) and the sampled tunes
(captioner/music.py) are checked the same way.

A tune parses when music21 reads it into at least one bar of notes. It keeps its meter when every bar lasts
what its time signature says, with the exceptions real tunes need: the first and the last bar may be short
(a pickup and the bar it completes), so may a bar at a repeat sign or double bar (a section's pickup and its
completion), and two short bars in a row that add up to one whole bar count as one (a bar written across
a line break, which music21 reads as two). No bar may be longer than the meter (music21 cuts a bar that is
into a whole one and a short one, which the check then finds).
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from fractions import Fraction

from captioner.errors import ConfigError


def meter_value(meter: str) -> Fraction | None:
    """The meter as a fraction of a whole note (C = 4/4, C| = 2/2); None for "none" or something unreadable."""
    meter = meter.strip()
    if meter in ("C", "C|"):  # common time 4/4, cut time 2/2
        return Fraction(1)
    match = re.fullmatch(r"(\d+)\s*/\s*(\d+)", meter)
    return Fraction(int(match.group(1)), int(match.group(2))) if match and int(match.group(2)) else None


SECTION_BARS = {"final", "double", "light-heavy", "light-light", "heavy-light", "heavy-heavy"}


def music21():
    try:
        import music21
    except ImportError:
        raise ConfigError("checking and playing tunes needs the music extra: pip install 'captioner[music]'") from None
    return music21


@dataclass
class TuneCheck:
    parses: bool
    keeps_meter: bool
    bars: int
    reason: str = ""  # why not, for the first fault found


def join_bars(text: str) -> str:
    """The tune with a line of music that does not end at a bar line joined to the next: in ABC a line break is
    not a bar line (the bar goes on), but music21 reads one there."""
    lines, joined = text.strip().splitlines(), []
    for line in lines:
        field = re.match(r"^[A-Za-z]:", line)
        previous = joined[-1] if joined else None
        music_goes_on = previous is not None and not field and not re.match(r"^[A-Za-z]:", previous)
        if music_goes_on and not previous.rstrip().endswith(("|", ":", "]")):
            joined[-1] = previous.rstrip().rstrip("\\") + " " + line
            continue
        joined.append(line)
    return "\n".join(joined) + "\n"


def parse_tune(text: str):
    """The music21 score of one tune (M:, L:, K: and its music), or an exception."""
    m21 = music21()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return m21.converter.parse("X:1\n" + join_bars(text), format="abc")


def _section_barline(barline) -> bool:
    m21 = music21()
    return barline is not None and (isinstance(barline, m21.bar.Repeat) or barline.type in SECTION_BARS)


def _at_section_edge(measures: list, i: int) -> bool:
    """Whether bar i starts or ends a section: a repeat sign or double bar on either side of it."""
    before = i > 0 and _section_barline(measures[i - 1].rightBarline)
    after = i + 1 < len(measures) and _section_barline(measures[i + 1].leftBarline)
    own = _section_barline(measures[i].leftBarline) or _section_barline(measures[i].rightBarline)
    return own or before or after


def check_tune(text: str) -> TuneCheck:
    """Whether a tune parses and keeps its meter (the module's rules)."""
    m21 = music21()
    try:
        score = parse_tune(text)
    except Exception as error:  # noqa: BLE001 - music21 raises many kinds on bad ABC
        return TuneCheck(False, False, 0, f"does not parse: {type(error).__name__}: {str(error)[:80]}")
    part = score.parts[0] if score.parts else score
    measures = list(part.getElementsByClass(m21.stream.Measure))
    if not measures or not any(m.notes for m in measures):
        return TuneCheck(False, False, len(measures), "no bars of notes")
    signatures = list(score.recurse().getElementsByClass(m21.meter.TimeSignature))
    if not signatures:
        return TuneCheck(True, False, len(measures), "no time signature")
    # music21 re-bars a bar longer than the meter by giving its overflow a time signature of its own; only the
    # meters the tune declares (M: fields, inline ones too) count
    declared = {4 * float(v) for v in map(meter_value, re.findall(r"M:\s*([^\]\n|]+)", text)) if v is not None}
    full, waiting = None, None  # waiting: (index, excused, length) of a short bar the next one may complete

    def short(i: int) -> TuneCheck:
        return TuneCheck(True, False, len(measures), f"bar {i + 1} is short")

    for i, measure in enumerate(measures):
        signature = measure.timeSignature or (signatures[0] if full is None else None)
        if signature is not None and signature.barDuration.quarterLength in declared:
            full = signature.barDuration.quarterLength
        if full is None:
            return TuneCheck(True, False, len(measures), "no meter music21 reads")
        length = measure.duration.quarterLength
        if length > full + 1e-9:
            return TuneCheck(True, False, len(measures), f"bar {i + 1} lasts {length} quarters, the meter {full}")
        is_short = length < full - 1e-9
        if waiting is not None:
            if is_short and abs(waiting[2] + length - full) < 1e-9:
                waiting = None  # two short bars that make one
                continue
            if not waiting[1]:
                return short(waiting[0])
            waiting = None
        if is_short:
            waiting = (i, i in (0, len(measures) - 1) or _at_section_edge(measures, i), length)
    if waiting is not None and not waiting[1]:
        return short(waiting[0])
    return TuneCheck(True, True, len(measures))


def split_tunes(text: str) -> list[str]:
    """The tunes of a corpus file: separated by blank lines."""
    return [part.strip("\n") + "\n" for part in text.split("\n\n") if part.strip()]


def check_tunes(tunes: list[str], log=None) -> dict:
    """The check of every tune and the totals. music21 reads about 10 tunes a second a core, so many tunes are
    checked on every core (log: a line at every tenth)."""
    workers = max(1, min(os.cpu_count() or 1, 16, len(tunes) // 64))
    step = max(1, len(tunes) // 10)
    checks = []
    with ProcessPoolExecutor(workers) if workers > 1 else contextlib.nullcontext() as pool:
        for i, check in enumerate(pool.map(check_tune, tunes, chunksize=32) if pool else map(check_tune, tunes), 1):
            checks.append(check)
            if log and (i % step == 0 or i == len(tunes)):
                log(f"  {i}/{len(tunes)} checked, {sum(c.keeps_meter for c in checks)} keep their meter")
    return {
        "tunes": len(tunes),
        "parse": sum(c.parses for c in checks),
        "parse_and_keep_meter": sum(c.parses and c.keeps_meter for c in checks),
        "each": [
            {"parses": c.parses, "keeps_meter": c.keeps_meter, "bars": c.bars, "reason": c.reason} for c in checks
        ],
    }
