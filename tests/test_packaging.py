"""The set-up contract: pyproject, environment.yml, Makefile, README and CI agree."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

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
    assert [line for line in ci.splitlines() if line and not line.startswith(("#", "set ", "cd "))] == ["make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo: setup$", makefile, flags=re.M) and re.search(r"^test: setup$", makefile, flags=re.M)


def test_console_script_is_installed_and_lists_commands():
    done = subprocess.run([sys.executable, "-m", "lab.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for command in ("train", "run", "data", "sweep", "runs", "report"):
        assert command in done.stdout
