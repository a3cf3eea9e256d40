"""cache/atomic.py: files appear whole or not at all, with the user's umask, and failures are one line."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from cache.atomic import atomic_path, atomic_paths, write_json_atomic
from pipeline.errors import OutputError


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_follow_the_umask(tmp_path, mask, mode):
    """Written files used to be 0600 whatever the umask (a shared cache unreadable to other users / Ray nodes)."""
    old = os.umask(mask)
    try:
        write_json_atomic(tmp_path / "a.json", {"x": 1})
        with atomic_path(tmp_path / "b.bin") as tmp:
            tmp.write_bytes(b"1")
    finally:
        os.umask(old)
    for name in ("a.json", "b.bin"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode


def test_a_failed_group_write_leaves_every_target_untouched(tmp_path, monkeypatch):
    (tmp_path / "a").write_text("old a")
    calls = []

    def fsync(fd):
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OutputError, match=r"cannot write .*/b: No space left on device"):
        with atomic_paths(tmp_path / "a", tmp_path / "b") as (ta, tb):
            ta.write_text("new a")
            tb.write_text("new b")
    assert (tmp_path / "a").read_text() == "old a" and not (tmp_path / "b").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # no temp files left


def test_output_problems_are_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    with pytest.raises(OutputError, match="dir: is a folder"):
        write_json_atomic(tmp_path / "dir", {})
    with pytest.raises(OutputError, match="a file of that name is in the way"):
        write_json_atomic(tmp_path / "file" / "x.json", {})
