"""What FastPath says about the compiled object before it tries the kernel: missing, or older
than its source (edited after the build), and not for an install that wrote both at once."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import turnd.fastpath as fastpath
from turnd.config_sections import FastpathConfig
from turnd.fastpath import FastPath, FastPathUnavailable


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    source, obj = tmp_path / "relay.bpf.c", tmp_path / "relay.bpf.o"
    source.write_text("/* the program */\n")
    monkeypatch.setattr(fastpath, "SOURCE", source)
    monkeypatch.setattr(fastpath, "OBJECT", obj)
    return source, obj


def test_a_missing_object_says_how_to_build_it(files: tuple[Path, Path]) -> None:
    with pytest.raises(FastPathUnavailable, match="is missing: build it with python3 -m"):
        FastPath(FastpathConfig(), ["127.0.0.1"])


def test_a_source_edited_after_the_build_says_rebuild(files: tuple[Path, Path]) -> None:
    source, obj = files
    obj.write_bytes(b"")
    built = obj.stat().st_mtime
    os.utime(source, (built + 5, built + 5))
    with pytest.raises(FastPathUnavailable, match=r"is older than relay\.bpf\.c: rebuild it"):
        FastPath(FastpathConfig(), ["127.0.0.1"])


def test_an_install_writing_the_source_just_after_the_object_is_not_stale(
    files: tuple[Path, Path],
) -> None:
    """pip writes both within a moment, in either order: that is no edit after the build."""
    source, obj = files
    real = Path(fastpath.__file__).with_name("relay.bpf.o")
    if real.exists():
        shutil.copy(real, obj)
    else:
        obj.write_bytes(b"")
    built = obj.stat().st_mtime
    os.utime(source, (built + 0.01, built + 0.01))
    try:
        loaded = FastPath(FastpathConfig(), ["127.0.0.1"])
    except FastPathUnavailable as exc:  # no privilege or no kernel support here: another reason
        assert "older than" not in str(exc)
    else:
        loaded.close()
