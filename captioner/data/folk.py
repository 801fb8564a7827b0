"""Folk tunes in ABC notation for the char LM: the collections that ship inside the PyPI package music21.

`music21/corpus/` holds 1,146 ABC files; the folk collections among them (Ryan's Mammoth Collection, O'Neill's
1850, the Essen folk songs, Aird's Airs, a few more; not the Josquin masses) hold about 13,000 tunes. Each
tune is kept as its meter, unit length and key, then its music, as folk-rnn did (Sturm et al. 2016):

    M:6/8
    L:1/8
    K:G
    |:D|G2B d2B|...

Titles, numbers, sources, notes and lyrics are left out, as are tunes of several voices and tunes without a
meter (the Essen songs marked "M: none"); a missing L: is written out by ABC's rule (1/16 under a 2/4 ... 3/4
boundary, 1/8 above). Runs of empty bars (" |  |  | F2F2G2 |", left by the Essen collection's conversion to ABC
where a song's first phrases have no notes) become one bar line: a model that learns them loops on "|  |" when
sampled. Tunes are split by a hash of the tune (a tenth held out), each distinct tune once, and written to
OUT/train.abc and OUT/val.abc, a blank line after each tune.

Training tunes are kept only where they parse and every bar keeps the meter by the check sampled tunes get
(captioner.music.check_tune; about a tenth fails it: Essen songs with undeclared changes of meter,
transcription slips), so the model learns bars of the meter it names; the held-out tunes stay whole and are
measured with the same check, for reference. This needs the music extra (music21).
"""

from __future__ import annotations

import hashlib
import re
from fractions import Fraction
from pathlib import Path

from captioner.data.abc import check_tunes, meter_value, music21
from captioner.errors import DataError
from captioner.files import write_text

# What `captioner ... data folk` prepares (its --help)
DESCRIPTION = (
    "about 12,600 folk tunes in ABC notation from the PyPI package music21 (train.abc: the tunes that keep their "
    "meter, checked with music21, the music extra; val.abc: a tenth, all kept)"
)

FOLK = ("ryansMammoth", "oneills1850", "essenFolksong", "airdsAirs", "miscFolk", "nottingham-dataset")
_FIELD = re.compile(r"^([A-Za-z]):\s*(.*)$")
FOLDERS = [[name] for name in FOLK]  # music21/corpus/NAME/...: path parts [2:3]
BODY_FIELDS = {"M", "L", "K"}  # field lines kept inside a tune's music: changes of meter, unit length, key
_EMPTY_BARS = re.compile(r"(?:(?<=\s)|^)\|(?:\s+\|)+(?=\s|$)")  # standalone bar lines with nothing between
VERSION = 3  # of the cleaning: data made by another version is made again


def clean_tune(tune: str) -> str | None:
    """One tune (from its X: line) as M:, L:, K: and its music; None if it has no meter, no key, or voices."""
    header: dict[str, str] = {}
    body: list[str] = []
    for raw in tune.splitlines():
        line = raw.split("%", 1)[0].rstrip() if not raw.startswith("%%") else ""
        if not line.strip():
            continue
        field = _FIELD.match(line)
        if "K" not in header:
            if field:
                header.setdefault(field.group(1), field.group(2).strip())
            continue
        if field and field.group(1) == "V":
            return None
        if field and field.group(1) not in BODY_FIELDS:
            continue
        line = _EMPTY_BARS.sub("|", line)
        if line.strip(" |"):
            body.append(line)
    if "V" in header or "K" not in header or not header["K"] or not body:
        return None
    meter = header.get("M", "")
    value = meter_value(meter)
    if value is None:
        return None
    unit = header.get("L") or ("1/16" if value < Fraction(3, 4) else "1/8")
    return f"M:{meter}\nL:{unit}\nK:{header['K']}\n" + "\n".join(body) + "\n"


def tunes_of(text: str) -> list[str]:
    """The cleaned tunes of an ABC file."""
    tunes = (clean_tune(part) for part in re.split(r"\n(?=X:)", "\n" + text) if part.startswith("X:"))
    return [tune for tune in tunes if tune]


def is_held_out(tune: str) -> bool:
    return int(hashlib.sha1(tune.encode()).hexdigest()[:8], 16) % 10 == 0


def prepare_folk(out: str | Path = "data/folk", log=print) -> Path:
    """Fetch the music21 wheel and write OUT/train.abc and OUT/val.abc; a second run reuses them."""
    from captioner.data.wheels import read_wheel

    out = Path(out)
    stamp = out / "VERSION"
    made = stamp.read_text().strip() if stamp.is_file() else None
    if (out / "train.abc").is_file() and (out / "val.abc").is_file() and made == str(VERSION):
        log(f"folk tunes already in {out}")
        return out
    files = read_wheel("music21", lambda name: name.endswith(".abc") and name.split("/")[2:3] in FOLDERS)
    texts = [data.decode("utf-8", errors="replace") for data in files.values()]
    if not texts:
        raise DataError(f"the music21 wheel holds none of the folk collections ({', '.join(FOLK)})")
    tunes = list(dict.fromkeys(tune for text in texts for tune in tunes_of(text)))
    held_out = [tune for tune in tunes if is_held_out(tune)]
    music21()  # the check needs it: say so before the checking starts
    training = [tune for tune in tunes if not is_held_out(tune)]
    log(f"checking the meter of {len(training)} training tunes (one tenth fails it)")
    checks = check_tunes(training, log)["each"]
    training = [tune for tune, check in zip(training, checks, strict=True) if check["keeps_meter"]]
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "train.abc", "\n".join(training) + "\n")
    write_text(out / "val.abc", "\n".join(held_out) + "\n")
    write_text(stamp, f"{VERSION}\n")
    characters = sum(len(t) for t in tunes)
    log(
        f"{len(tunes)} distinct tunes from {len(texts)} ABC files ({characters} characters): {len(training)} "
        f"for training (those that keep their meter), {len(held_out)} held out, in {out}"
    )
    return out
