"""lab.cache: entries are keyed by the code that makes them, read from the source files."""

import importlib.metadata
import shutil
from pathlib import Path

import pytest

import lab
from lab import cache

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
    assert cache.imported_modules("lab.cache") == {"lab.cache", "lab.provenance"}  # its version lookup


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
