"""Provenance (lab.provenance): git commit and library versions."""

import os
import platform
import re
import subprocess
import sys
from pathlib import Path

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


def test_cpu_model_reads_cpuinfo_and_falls_back_to_platform(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n\nprocessor\t: 1\n")
    assert provenance.cpu_model(cpuinfo) == "AMD EPYC 7B13"
    assert provenance.cpu_model(tmp_path / "absent") == (platform.processor() or platform.machine())


def test_machine_memory_is_what_linux_reports():
    meminfo = Path("/proc/meminfo").read_text()
    total_kib = int(re.search(r"^MemTotal:\s+(\d+) kB$", meminfo, re.MULTILINE).group(1))
    facts = provenance.machine()
    assert facts["memory_bytes"] == total_kib * 1024
    assert facts["cores"] == os.cpu_count() and facts["cpu"]
