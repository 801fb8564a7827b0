"""Writing files atomically: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import yaml


@contextlib.contextmanager
def atomic_path(path: str | Path, sync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block ends without error it replaces `path`.

    On an error (or an interrupt) the temporary file is removed and `path` is left as it was. sync
    (checkpoints: survive a power cut, not only a crash) flushes the file to the disk before the rename,
    and the folder after it, so that the rename itself is on the disk when the block ends.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if sync:
            with open(tmp, "rb+") as file:
                os.fsync(file.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync:
        sync_folder(path.parent)


def sync_folder(folder: Path) -> None:
    """fsync a folder, making the renames and creations in it durable; a no-op on the file systems that cannot
    sync a folder (EINVAL or ENOTSUP)."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    finally:
        os.close(fd)


def write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, data, indent: int | None = 1) -> None:
    """Write JSON (non-ASCII kept as is) atomically."""
    write_text(path, json.dumps(data, indent=indent, ensure_ascii=False))


def write_yaml(path: str | Path, data: dict) -> None:
    """Write YAML (keys in their given order) atomically."""
    write_text(path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def json_objects(lines) -> Iterator[tuple[int, str, dict]]:
    """(line number, line, object) of every line of a JSON-lines text that is not blank; ValueError saying which
    line is not JSON or not a JSON object (the caller names the file)."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"line {number}: not JSON ({error})") from None
        if not isinstance(row, dict):
            raise ValueError(f"line {number}: not a JSON object")
        yield number, line, row
