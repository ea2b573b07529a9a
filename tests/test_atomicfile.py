"""The one atomic-write helper: a file is the old one or the new one, never a mix, never a temp left."""

from __future__ import annotations

import os
import stat

import pytest

from appliance import atomicfile


def test_write_replaces_whole_and_leaves_no_temp(tmp_path):
    target = tmp_path / "doc.json"
    target.write_text("old")
    atomicfile.write_text(target, "new ü")
    assert target.read_text(encoding="utf-8") == "new ü"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["doc.json"]


def test_mode_is_exact_whatever_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        atomicfile.write_bytes(tmp_path / "settings.json", b"{}", mode=0o640)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "settings.json").stat().st_mode) == 0o640


def test_exclusive_never_replaces_and_temp_goes_in_temp_dir(tmp_path):
    aside = tmp_path / "aside"
    aside.mkdir()
    atomicfile.write_text(tmp_path / "J1.JDF", "first", exclusive=True, temp_dir=aside)
    with pytest.raises(FileExistsError):
        atomicfile.write_text(tmp_path / "J1.JDF", "second", exclusive=True, temp_dir=aside)
    assert (tmp_path / "J1.JDF").read_text() == "first"
    assert not list(aside.iterdir())


def test_a_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "doc.txt"
    target.write_text("old")
    with pytest.raises(TypeError):  # fails after the temp file was created
        atomicfile.write_bytes(target, "not bytes")  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError):
        atomicfile.write_text(tmp_path / "missing" / "doc.txt", "x")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["doc.txt"]
