"""Atomic output (``dit_sparse.atomic``) and the writers built on it."""

import os

import numpy as np
import pytest

from dit_sparse import video_io
from dit_sparse.atomic import atomic_path, write_text


def test_atomic_path_replaces_only_on_success(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="writer failed"):
        with atomic_path(path) as tmp:
            assert tmp.parent == tmp_path and tmp.suffix == ".json" and tmp != path
            tmp.write_text("half")
            raise RuntimeError("writer failed")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
    with atomic_path(path) as tmp:
        tmp.write_text("new")
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_write_text_flushes_before_rename(tmp_path, monkeypatch):
    path = tmp_path / "a.txt"
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(path.exists())  # the destination does not exist yet when the data is flushed
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    assert write_text(path, "héllo\n") == path
    assert synced == [False]
    assert path.read_text(encoding="utf-8") == "héllo\n"


def test_missing_folder_names_the_argument(tmp_path):
    path = tmp_path / "nowhere" / "x.txt"
    with pytest.raises(FileNotFoundError, match=r"^--json=.*nowhere.*x\.txt.*its folder .*nowhere.* does not exist"):
        write_text(path, "x", what="--json")
    assert list(tmp_path.iterdir()) == []


def test_write_frames_leaves_nothing_when_the_encoder_fails(tmp_path, monkeypatch):
    path = tmp_path / "clip.png"
    frames = np.zeros((2, 4, 6, 3), np.uint8)
    video_io.write_frames(path, frames)
    before = path.read_bytes()

    def broken(tmp, data):
        tmp.write_bytes(b"\x89PNG partial")
        raise OSError("encoder crashed")

    monkeypatch.setattr(video_io, "_write_png", broken)
    with pytest.raises(OSError, match="encoder crashed"):
        video_io.write_frames(path, frames + 255)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["clip.png"]


@pytest.fixture(params=[0o022, 0o077], ids=["umask022", "umask077"])
def umask(request):
    """Run the test under a known umask (restored afterwards)."""
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path):
    return os.stat(path).st_mode & 0o777


def test_write_text_gets_the_umask_mode(tmp_path, umask):
    path = write_text(tmp_path / "a.txt", "x")
    assert _mode(path) == 0o666 & ~umask
    os.chmod(path, 0o600)  # an existing destination's mode is not kept: a new file's mode, as open(path, "w")
    write_text(path, "y")
    assert _mode(path) == 0o666 & ~umask


def test_plan_save_gets_the_umask_mode(tmp_path, umask):
    from dit_sparse.plan import Plan

    path = Plan.load(os.path.join(os.path.dirname(__file__), "..", "docs", "plans", "plan128_e10p.json")).save(
        tmp_path / "plan.json")
    assert _mode(path) == 0o666 & ~umask


@pytest.mark.parametrize("suffix", [".mp4", ".gif", ".png"])
def test_write_frames_gets_the_umask_mode(tmp_path, umask, suffix):
    if suffix == ".mp4":
        pytest.importorskip("imageio_ffmpeg", reason="MP4 needs imageio-ffmpeg")
    frames = np.zeros((2, 8, 10, 3), np.uint8)
    path = video_io.write_frames(tmp_path / f"clip{suffix}", frames)
    assert _mode(path) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == [f"clip{suffix}"]
