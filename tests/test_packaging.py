"""The set-up contract: pyproject, environment.yml, Makefile, README and CI agree."""

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from lab import text

ROOT = Path(__file__).resolve().parents[1]


def test_environment_yml_follows_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [item for item in environment["dependencies"] if isinstance(item, str)]
    pip = next(item["pip"] for item in environment["dependencies"] if isinstance(item, dict))
    assert f"python{project['requires-python']}" in conda
    assert pip == ["-e .[dev]"]  # dependencies are declared once, in pyproject.toml


def test_accelerator_extras_install_jax_builds_and_are_documented():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    readme = (ROOT / "README.md").read_text()
    environment = (ROOT / "environment.yml").read_text()
    for extra in ("cuda12", "cuda13", "tpu"):
        (requirement,) = extras[extra]
        assert re.fullmatch(rf"jax\[{extra}\]>=[0-9.]+", requirement)
        assert f"pip install -e '.[dev,{extra}]'" in readme
    for extra in ("cuda12", "cuda13", "tpu"):
        assert extra in environment  # its comment says how a conda environment gets them


def test_readme_quickstart_is_the_make_targets_ci_runs():
    readme = (ROOT / "README.md").read_text()
    quickstart = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^(make \w+)", quickstart, flags=re.M)
    assert commands == ["make demo", "make test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.findall(r"^[^#\n]*\bmake\b.*$", ci, flags=re.M) == ["LAB_TEST_NO_SKIPS=1 make test"]
    assert ci.rstrip().splitlines()[-1] == "LAB_TEST_NO_SKIPS=1 make test"
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo: setup$", makefile, flags=re.M) and re.search(r"^test: setup$", makefile, flags=re.M)


def test_console_script_is_installed_and_lists_commands():
    done = subprocess.run([sys.executable, "-m", "lab.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for command in ("train", "run", "data", "sweep", "runs", "report"):
        assert command in done.stdout


def test_ci_installs_every_debian_package_the_loaders_read():
    ci = (ROOT / ".ci" / "run").read_text()
    listed = re.search(r"^DEBIAN_PACKAGES=\(([^)]*)\)", ci, flags=re.M).group(1).split()
    read = {package for _, package, _ in text.LANGUAGE_SOURCES.values()} | {"fortunes-min", "dataset-fashion-mnist"}
    assert sorted(listed) == sorted(read)


SKIPPING_TESTS = """
import pytest

def test_on_missing_data():
    pytest.skip("the data is not installed")

@pytest.mark.skip(reason="needs a GPU: CUDA only")
def test_on_a_gpu():
    pass

@pytest.mark.xfail(reason="known")
def test_known_failure():
    assert False

def test_that_runs():
    pass
"""


@pytest.mark.parametrize("required", [False, True])
def test_where_every_test_must_run_a_skip_fails_unless_it_needs_a_gpu(tmp_path, required):
    (tmp_path / "test_skipping.py").write_text(SKIPPING_TESTS)
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    environment.pop("LAB_TEST_NO_SKIPS", None)
    if required:
        environment["LAB_TEST_NO_SKIPS"] = "1"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider", "-c", os.devnull,
         "--rootdir", str(tmp_path), "-q", "-rA", "test_skipping.py"],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    summary = done.stdout.strip().splitlines()[-1]
    if required:
        assert done.returncode == 1, done.stdout
        assert re.match(r"1 failed, 1 passed, 1 skipped, 1 xfailed in ", summary), summary
        assert "skipped where every test must run (LAB_TEST_NO_SKIPS is set): the data is not installed" in done.stdout
    else:
        assert done.returncode == 0, done.stdout
        assert re.match(r"1 passed, 2 skipped, 1 xfailed in ", summary), summary
