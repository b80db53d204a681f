"""``dit-sparse inspect``: output arguments are checked before any work, errors are one line
(exit code 2), the PNG is written atomically with the umask's mode."""

import os
from pathlib import Path

import pytest

from dit_sparse.cli import main

PLAN = str(Path(__file__).resolve().parent.parent / "docs" / "plans" / "plan128_e10p.json")


def _fails(capsys, argv, message):
    """``main(argv)`` exits 2 with exactly ``dit-sparse inspect: error: <message>`` on stderr
    and nothing on stdout."""
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [f"dit-sparse inspect: error: {message}"]


def test_png_into_a_missing_folder_fails_before_the_summary(tmp_path, capsys):
    png = str(tmp_path / "nowhere" / "plan.png")
    _fails(capsys, ["inspect", PLAN, "--png", png],
           f"--png {png!r}: its folder {str(tmp_path / 'nowhere')!r} does not exist (create it first)")
    assert list(tmp_path.iterdir()) == []


def test_png_with_another_suffix_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _fails(capsys, ["inspect", PLAN, "--png", "p.jpg"], "--png 'p.jpg' must end in .png")
    _fails(capsys, ["inspect", PLAN, "--png", "plan"], "--png 'plan' must end in .png")
    assert list(tmp_path.iterdir()) == []


def test_png_naming_a_folder_is_refused(tmp_path, capsys):
    folder = tmp_path / "x.png"
    folder.mkdir()
    _fails(capsys, ["inspect", PLAN, "--png", str(folder)],
           f"--png {str(folder)!r} is a folder; give a file name ending in .png")
    assert list(tmp_path.iterdir()) == [folder] and list(folder.iterdir()) == []


def test_png_into_a_read_only_folder_is_refused(tmp_path, capsys, monkeypatch):
    real_access = os.access
    # chmod does not stop root, who runs these tests in containers: ask os.access instead
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == tmp_path else real_access(p, mode))
    png = str(tmp_path / "plan.png")
    _fails(capsys, ["inspect", PLAN, "--png", png], f"--png {png!r}: its folder {str(tmp_path)!r} is not writable")
    assert list(tmp_path.iterdir()) == []


def test_png_is_checked_before_the_plan_is_read(tmp_path, capsys):
    _fails(capsys, ["inspect", str(tmp_path / "missing.json"), "--png", str(tmp_path / "p.jpg")],
           f"--png {str(tmp_path / 'p.jpg')!r} must end in .png")


def test_plan_that_is_a_folder_is_one_line(tmp_path, capsys):
    _fails(capsys, ["inspect", str(tmp_path)],
           f"plan path {str(tmp_path)!r} is a folder, not a plan file (give the path of a plan's .json file)")


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_png_is_written_atomically_with_the_umask_mode(tmp_path, capsys, mask):
    from PIL import Image

    png = tmp_path / "plan.png"
    old = os.umask(mask)
    try:
        assert main(["inspect", PLAN, "--png", str(png)]) == 0
    finally:
        os.umask(old)
    out, err = capsys.readouterr()
    assert err == ""
    assert out.startswith("dit-sparse plan for WanTransformer3DModel") and out.endswith(f"\nwrote {png}\n")
    assert [p.name for p in tmp_path.iterdir()] == ["plan.png"]  # no temporary file left
    assert os.stat(png).st_mode & 0o777 == 0o666 & ~mask
    with Image.open(png) as im:
        assert im.format == "PNG" and im.width > 0 and im.height > 0


def test_failed_png_write_keeps_the_old_file(tmp_path, capsys, monkeypatch):
    from PIL import Image

    png = tmp_path / "plan.png"
    png.write_bytes(b"old")

    def broken(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"\x89PNG partial")
        raise OSError("encoder crashed")

    monkeypatch.setattr(Image.Image, "save", broken)
    assert main(["inspect", PLAN, "--png", str(png)]) == 2
    assert capsys.readouterr().err == "dit-sparse inspect: error: encoder crashed\n"
    assert png.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["plan.png"]
