"""Atomic writes: a reader sees the old file or the new one; with sync, the new one survives a power cut."""

from __future__ import annotations

import os
import stat

import pytest

from captioner import files


def test_a_synced_write_flushes_the_file_then_the_folder_after_the_rename(tmp_path, monkeypatch):
    events = []
    fsync, replace = os.fsync, os.replace

    def logged_fsync(fd):
        events.append(("fsync", "folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"))
        fsync(fd)

    def logged_replace(source, target):
        events.append(("replace", os.path.basename(target)))
        replace(source, target)

    monkeypatch.setattr(os, "fsync", logged_fsync)
    monkeypatch.setattr(os, "replace", logged_replace)
    with files.atomic_path(tmp_path / "last.pt", sync=True) as tmp:
        tmp.write_bytes(b"weights")
    assert events == [("fsync", "file"), ("replace", "last.pt"), ("fsync", "folder")]
    assert (tmp_path / "last.pt").read_bytes() == b"weights"
    events.clear()
    files.write_text(tmp_path / "notes.txt", "unsynced")  # sync is for checkpoints: the others do not wait
    assert events == [("replace", "notes.txt")]


@pytest.mark.parametrize("where", ["write", "fsync"])
def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path, monkeypatch, where):
    target = tmp_path / "last.pt"
    target.write_bytes(b"old weights")
    if where == "fsync":
        monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(OSError, match="No space left"), files.atomic_path(target, sync=True) as tmp:
        tmp.write_bytes(b"new wei")
        if where == "write":
            raise OSError(28, "No space left on device")
    assert target.read_bytes() == b"old weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_a_folder_that_cannot_be_synced_is_no_error(tmp_path, monkeypatch):
    """Some file systems refuse fsync on a folder (EINVAL); the rename is done and the write succeeds."""
    fsync = os.fsync

    def refusing(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(22, "Invalid argument")
        fsync(fd)

    monkeypatch.setattr(os, "fsync", refusing)
    with files.atomic_path(tmp_path / "last.pt", sync=True) as tmp:
        tmp.write_bytes(b"weights")
    assert (tmp_path / "last.pt").read_bytes() == b"weights"
