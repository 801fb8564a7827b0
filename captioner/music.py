"""Folk tunes sampled from a char LM trained on ABC notation: checked as the held-out tunes are (data/abc.py:
do they parse, do they keep their meter), and what they sound like (MIDI, and audio where a synthesizer is
installed). Needs the music extra (music21).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from captioner.data.abc import check_tunes, music21, parse_tune, split_tunes
from captioner.device import resolve_device
from captioner.files import write_json, write_text
from captioner.models.char_lm import sample_text
from captioner.models.registry import restore


def write_midi(text: str, path: str | Path) -> Path:
    """The tune as a MIDI file."""
    path = Path(path)
    parse_tune(text).write("midi", fp=str(path))
    return path


def synthesizer() -> tuple[str, str] | None:
    """fluidsynth and a General MIDI sound font, where installed (Debian: fluidsynth, fluid-soundfont-gm)."""
    program = shutil.which("fluidsynth")
    fonts = [Path("/usr/share/sounds/sf2/FluidR3_GM.sf2"), Path("/usr/share/sounds/sf2/default-GM.sf2")]
    font = next((f for f in fonts if f.is_file()), None)
    return (program, str(font)) if program and font else None


def render_audio(midi: str | Path, wav: str | Path) -> Path | None:
    """The MIDI file played into a WAV file by fluidsynth; None where no synthesizer is installed."""
    found = synthesizer()
    if found is None:
        return None
    program, font = found
    subprocess.run([program, "-ni", "-F", str(wav), "-r", "44100", font, str(midi)], check=True, capture_output=True)
    return Path(wav)


def sampled_tunes(texts: list[str]) -> list[str]:
    """Each sampled text's first tune: up to its first blank line (a text that never ends a tune stays whole,
    and fails the check if its music is cut off)."""
    return [text.split("\n\n", 1)[0].strip("\n") + "\n" for text in texts]


def tune_file(tunes: list[str], title: str) -> str:
    """Tunes as one ABC file: each with an X: number and a title."""
    return "\n".join(f"X:{i}\nT:{title} {i}\n{tune}" for i, tune in enumerate(tunes, 1))


def make_tunes(
    checkpoint: str | Path,
    out: str | Path,
    count: int = 100,
    temperature: float = 1.0,
    seed: int = 0,
    length: int = 1500,
    device: str = "auto",
    log=print,
) -> dict:
    """Sample `count` tunes from a char LM trained on ABC, check them, and write OUT/tunes.abc, OUT/tunes.json,
    OUT/sample.mid (the first tune that keeps its meter) and OUT/sample.wav (where fluidsynth is installed)."""
    music21()  # the extra is there before anything is sampled
    model, _, vocabularies = restore(checkpoint, resolve_device(device), kind="char_lm")
    texts = sample_text(model, vocabularies["vocab"], "", count, length, temperature, None, seed)
    tunes = sampled_tunes(texts)
    report = {"checkpoint": str(checkpoint), "temperature": temperature, "seed": seed, **check_tunes(tunes)}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "tunes.abc", tune_file(tunes, "Sample"))
    good = [t for t, c in zip(tunes, report["each"], strict=True) if c["parses"] and c["keeps_meter"]]
    if good:
        report["midi"] = str(write_midi(good[0], out / "sample.mid"))
        audio = render_audio(out / "sample.mid", out / "sample.wav")
        report["audio"] = str(audio) if audio else None
    write_json(out / "tunes.json", report)
    log(
        f"{count} tunes sampled at temperature {temperature}: {report['parse']} parse, "
        f"{report['parse_and_keep_meter']} parse and keep their meter; {out}/tunes.abc"
        + (f", {report['midi']}" if good else "")
        + (f", {report['audio']}" if good and report.get("audio") else "")
    )
    return report


def check_file(path: str | Path, count: int | None = None, log=print) -> dict:
    """The same check of the tunes of an ABC file written by `captioner lm data folk` (the reference)."""
    tunes = split_tunes(Path(path).read_text(encoding="utf-8"))[:count]
    report = check_tunes(tunes)
    log(
        f"{path}: {report['tunes']} tunes, {report['parse']} parse, "
        f"{report['parse_and_keep_meter']} parse and keep their meter"
    )
    return report
