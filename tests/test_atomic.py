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
