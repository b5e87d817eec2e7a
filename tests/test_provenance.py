"""Provenance (lab.provenance): git commit and library versions."""

import subprocess
import sys

from lab import provenance


def test_git_commit_inside_and_outside_a_repository(tmp_path):
    outside = tmp_path / "plain"
    outside.mkdir()
    assert provenance.git_commit(outside) is None
    repository = tmp_path / "repo"
    repository.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], cwd=repository, check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "start"], cwd=repository, check=True)
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repository, check=True, capture_output=True, text=True
    ).stdout.strip()
    assert provenance.git_commit(repository) == head


def test_library_versions_name_python_and_the_numeric_libraries():
    versions = provenance.library_versions()
    assert set(versions) == {"python", "jax", "jaxlib", "flax", "optax", "numpy", "lab"}
    assert versions["python"] == ".".join(map(str, sys.version_info[:3]))
