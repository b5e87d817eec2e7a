"""Atomic writes (lab.files)."""

import re
from pathlib import Path

import pytest

from lab import files


def test_atomic_path_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError), files.atomic_path(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


@pytest.mark.parametrize(
    ("where", "problem"),
    [
        ("{tmp}", "{tmp} is a folder; give a file name"),
        ("{tmp}/file/result.json", "{tmp}/file/result.json needs {tmp}/file to be a folder, but it is a file"),
        ("{tmp}/file/deeper/result.json", "needs {tmp}/file to be a folder, but it is a file"),
    ],
)
def test_an_output_path_that_cannot_be_written_is_refused_before_any_work(tmp_path, where, problem):
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match=re.escape(f"--output {where.format(tmp=tmp_path)}")) as error:
        files.check_output_path(where.format(tmp=tmp_path), "--output")
    assert problem.format(tmp=tmp_path) in str(error.value)
    files.check_output_path(tmp_path / "new" / "result.json", "--output")
    assert not (tmp_path / "new").exists()  # checking creates nothing


def test_an_output_folder_that_is_not_writable_is_refused(tmp_path, monkeypatch):
    # Root ignores permission bits, so the check's answer is what is faked here.
    monkeypatch.setattr(files.os, "access", lambda path, mode: Path(path) != tmp_path)
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path} is not writable")):
        files.check_output_path(tmp_path / "result.json", "--output")


def test_write_atomic_writes_text_and_bytes(tmp_path):
    assert files.write_atomic(tmp_path / "a" / "t.txt", "é") == tmp_path / "a" / "t.txt"
    assert (tmp_path / "a" / "t.txt").read_text(encoding="utf-8") == "é"
    files.write_atomic(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a", "b.bin"]


@pytest.mark.parametrize(
    ("content", "looks"),
    [
        (b"", "an empty file"),
        (b'  {"config": {}}', "a JSON file"),
        (b"[1, 2]", "a JSON file"),
        (b"sweep,point_id\ns,p\n", "a text file"),
        ("é".encode() * 2048 + b"x", "a text file"),  # 4096 bytes end inside a character
        (b"PAR1\x00\x01", "a Parquet file"),
        (b"\x89PNG\r\n\x1a\n\x00", "a binary file"),
        (b"SQLite format 3\x00" + b"\x00" * 100, "an SQLite database"),
    ],
)
def test_describe_says_what_a_file_looks_like(tmp_path, content, looks):
    path = tmp_path / "file"
    path.write_bytes(content)
    assert files.describe(path) == looks


def test_write_together_leaves_no_file_of_the_set_when_one_fails(tmp_path):
    def fail(path):
        path.write_text("half")
        raise OSError(28, "No space left on device")

    (tmp_path / "a.md").write_text("old")
    with pytest.raises(OSError, match=re.escape(f"cannot write {tmp_path / 'b.png'}: No space left on device")):
        files.write_together({tmp_path / "a.md": lambda path: path.write_text("new"), tmp_path / "b.png": fail})
    assert [(path.name, path.read_text()) for path in tmp_path.iterdir()] == [("a.md", "old")]
    assert files.write_together({tmp_path / "a.md": lambda path: path.write_text("new")}) == [tmp_path / "a.md"]
    assert [(path.name, path.read_text()) for path in tmp_path.iterdir()] == [("a.md", "new")]
