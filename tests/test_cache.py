"""lab.cache: entries are keyed by the code that makes them, read from the source files, and checked
against the digests recorded when they were written."""

import errno
import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import lab
from lab import cache, files, processes

PACKAGE = Path(lab.__file__).parent


@pytest.fixture
def package(tmp_path):
    """A copy of the lab sources to edit."""
    copy = tmp_path / "lab"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def test_the_modules_a_module_runs_are_found_in_its_imports():
    found = cache.imported_modules("lab.transfer")
    # transfer imports train and semisupervised, which imports augment; none imports the store or the widgets.
    expected = {"lab.transfer", "lab.train", "lab.semisupervised", "lab.augment", "lab.models", "lab.data", "lab.cache"}
    # data's registry imports its loaders: a pretraining corpus's tokenizer and a benchmark's reader are code it runs.
    expected |= {"lab.dataset", "lab.text", "lab.image_benchmarks"}
    assert expected <= found
    assert not found & {"lab.store", "lab.widgets", "lab.sweep", "lab.report", "lab.cli"}
    # Its version lookup, atomic writes, and the writer of an entry being written.
    assert cache.imported_modules("lab.cache") == {"lab.cache", "lab.provenance", "lab.files", "lab.processes"}


def test_relative_and_function_level_imports_count(package):
    (package / "extra_one.py").write_text("def f():\n    from . import extra_two\n")
    (package / "extra_two.py").write_text("from .models import make_model\n")
    assert {"lab.extra_one", "lab.extra_two", "lab.models"} <= cache.imported_modules("lab.extra_one", package)


def test_fingerprint_changes_with_the_code_the_module_runs_and_only_that(package):
    before = cache.fingerprint("lab.transfer", package_dir=package)
    assert cache.fingerprint("lab.transfer", package_dir=package) == before
    with (package / "widgets.py").open("a") as file:  # not on the training path
        file.write("\n# a comment\n")
    assert cache.fingerprint("lab.transfer", package_dir=package) == before
    with (package / "models.py").open("a") as file:  # imported by transfer
        file.write("\n# a comment\n")
    after_models = cache.fingerprint("lab.transfer", package_dir=package)
    assert after_models != before
    with (package / "text.py").open("a") as file:  # imported through data's registry: tokenizes pretraining corpora
        file.write("\n# a comment\n")
    assert cache.fingerprint("lab.transfer", package_dir=package) not in {before, after_models}


def test_fingerprint_changes_with_a_library_version(monkeypatch):
    before = cache.fingerprint("lab.transfer")
    real_version = importlib.metadata.version
    monkeypatch.setattr(
        importlib.metadata, "version", lambda name: "0.0.1" if name == "optax" else real_version(name)
    )
    assert cache.fingerprint("lab.transfer") != before


def test_cache_dir_follows_lab_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("LAB_CACHE", str(tmp_path))
    assert cache.cache_dir() == tmp_path
    monkeypatch.delenv("LAB_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.cache_dir() == tmp_path / "home" / ".cache" / "lab"


def test_the_test_session_never_uses_the_users_cache():
    """The suite runs on a fresh LAB_CACHE (the root conftest.py), so a stale entry on the machine cannot
    change a result, and the tests write nothing into the user's cache."""
    assert cache.cache_dir() != Path.home() / ".cache" / "lab"
    assert cache.cache_dir().name.startswith("lab-cache-")


def test_key_is_stable_across_processes_and_orders():
    assert cache.key({"b": 1, "a": [1, 2]}, "x") == cache.key({"a": [1, 2], "b": 1}, "x")
    assert cache.key({"a": 1}) != cache.key({"a": 2})
    assert cache.key({"a": 1}) == "2696610e78752a9e"  # no salted hash(): the same on every machine


# --------------------------------------------------------------------------- checked entries


def _flip(path: Path, offset: int | None = None, count: int = 1) -> None:
    """XOR ``count`` bytes of ``path`` at ``offset`` (default: the middle)."""
    content = bytearray(path.read_bytes())
    start = len(content) // 2 if offset is None else offset
    for index in range(start, min(start + count, len(content))):
        content[index] ^= 0xFF
    path.write_bytes(bytes(content))


def _entry(folder: Path) -> Path:
    (folder / "arrays" / "d").mkdir(parents=True)
    (folder / "arrays" / "d" / "0").write_bytes(bytes(range(256)) * 4)
    (folder / "config.json").write_text('{"a": 1}')
    return folder


def test_the_manifest_is_what_sha256sum_checks(tmp_path):
    entry = _entry(tmp_path / "entry")
    cache.write_manifest(entry)
    lines = (entry / cache.MANIFEST).read_text().splitlines()
    expected = {
        f"{hashlib.sha256((entry / name).read_bytes()).hexdigest()}  {name}" for name in ("arrays/d/0", "config.json")
    }
    assert set(lines) == expected
    if shutil.which("sha256sum"):
        subprocess.run(["sha256sum", "--check", "--quiet", cache.MANIFEST], cwd=entry, check=True)


@pytest.mark.parametrize("name", ["arrays/d/0", "config.json"])
def test_every_damaged_missing_or_added_file_is_named(tmp_path, name):
    entry = _entry(tmp_path / "entry")
    cache.write_manifest(entry)
    assert cache.damage(entry) is None
    _flip(entry / name)
    assert cache.damage(entry) == f"damaged: {name}"
    (entry / name).unlink()
    assert cache.damage(entry) == f"missing: {name}"
    cache.write_manifest(entry)
    (entry / "arrays" / "extra").write_bytes(b"x")
    assert cache.damage(entry) == f"not in {cache.MANIFEST}: arrays/extra"
    (entry / cache.MANIFEST).unlink()
    assert cache.damage(entry) == f"no readable {cache.MANIFEST}"


def test_a_damaged_file_entry_is_discarded_and_said_in_one_line(tmp_path, capsys):
    path = tmp_path / "thing.npz"
    assert cache.write_checked(path, cache.npz_bytes(x=np.arange(100.0)), "the thing")
    np.testing.assert_array_equal(cache.read_checked(path, cache.read_npz, "the thing")["x"], np.arange(100.0))
    _flip(path, offset=len(path.read_bytes()) - 200, count=8)  # inside the array's data: np.load would not notice
    assert cache.read_checked(path, cache.read_npz, "the thing") is None
    message = capsys.readouterr().err
    assert message == (
        f"lab: the thing cached in {path} failed its check (damaged: thing.npz); discarded, it is made again\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_file_entry_without_its_digest_or_unreadable_is_made_again(tmp_path, capsys):
    path = tmp_path / "thing.json"
    files.write_atomic(path, "{}")  # as lab wrote entries before digests: never checked, so made again
    assert cache.read_checked(path, lambda path: path.read_text(), "the thing") is None
    assert "no readable thing.json.sha256" in capsys.readouterr().err
    cache.write_checked(path, "not json", "the thing")

    def decode(path):
        raise ValueError("expected value at line 1\nsecond line")

    assert cache.read_checked(path, decode, "the thing") is None
    assert capsys.readouterr().err.count("\n") == 1
    assert not path.exists()


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_leaves_the_result_in_memory_and_says_it_was_not_cached(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(Path, "write_bytes", _disk_full)
    assert not cache.write_checked(tmp_path / "thing.npz", b"content", "the thing")
    assert not cache.publish(tmp_path / "entry", lambda folder: (folder / "a").write_bytes(b"x"), "the entry")
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        f"lab: the thing was not cached ({tmp_path}: the disk is full); going on with it in memory",
        f"lab: the entry was not cached ({tmp_path}: the disk is full); going on with it in memory",
    ]
    assert list(tmp_path.iterdir()) == []  # no temporary file or folder left


def test_errors_other_than_the_disks_are_raised(tmp_path):
    def bug(folder):
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        cache.publish(tmp_path / "entry", bug, "the entry")
    assert list(tmp_path.iterdir()) == []


def _exited_process() -> processes.Owner:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return processes.Owner(processes.Owner.current().host, child.pid, "0")


def test_temporaries_of_killed_writers_are_removed_at_the_next_write_and_live_ones_kept(tmp_path):
    dead = tmp_path / ".key1.0a.tmp"
    alive = tmp_path / ".key2.0b.tmp"
    for folder, owner in ((dead, _exited_process()), (alive, processes.Owner.current())):
        folder.mkdir()
        (folder / ".writer.json").write_text(owner.to_json())
    old_file, young_file = tmp_path / ".thing.npz.0c.tmp", tmp_path / ".thing.npz.0d.tmp"
    old_file.write_bytes(b"half")
    young_file.write_bytes(b"half")
    old = os.stat(old_file).st_mtime - cache.STALE_AFTER_S - 60
    os.utime(old_file, (old, old))
    os.utime(alive, (old, old))  # a live writer's is kept however old
    assert cache.publish(tmp_path / "key3", lambda folder: (folder / "a").write_bytes(b"x"), "the entry")
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([alive.name, young_file.name, "key3"])
    assert cache.damage(tmp_path / "key3") is None


def test_disk_errors_are_found_through_the_errors_they_caused():
    try:
        try:
            _disk_full()
        except OSError as error:
            raise RuntimeError("orbax could not finalize") from error
    except RuntimeError as error:
        assert cache.disk_error(error) == "the disk is full"
    assert cache.disk_error(ValueError("no")) is None
