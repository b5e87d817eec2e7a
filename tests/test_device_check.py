"""benchmarks/device_check.py end to end on the CPU at toy sizes (--smoke): every part runs or says why
not, and the JSON and the Markdown section for benchmarks/RESULTS.md are written. The numbers are
not checked: they are toy-sized timings (speed is measured in benchmarks/, never asserted)."""

import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("steps", "torch", "mnist", "tests", "fashion")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("device-check")
    command = [sys.executable, str(ROOT / "benchmarks" / "device_check.py"), "--smoke", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "device_check.json").read_text()), (out / "device_check.md").read_text(), out


def test_every_part_ran_or_says_why_not(smoke):
    report, _, _ = smoke
    assert report["smoke"] is True and report["environment"]["device"] == "cpu (1 device)"
    assert list(report["parts"]) == list(PARTS)
    errors = {name: part["error"] for name, part in report["parts"].items() if "error" in part}
    assert not errors
    steps = report["parts"]["steps"]["rows"]
    assert [row["seeds"] for row in steps.values()][:2] == [1, 2]  # 1 seed and the vmapped seeds
    assert all(row["steps_per_s"] > 0 for row in steps.values())
    fixmatch = report["parts"]["mnist"]["rows"]["fixmatch"]
    assert len(fixmatch["per_seed"]) == 2 and 0 <= fixmatch["accuracy_mean"] <= 1
    tests = report["parts"]["tests"]
    assert tests["platform"] == "cpu" and tests["counts"]["passed"] > 0 and tests["counts"]["failures"] == 0
    assert report["parts"]["fashion"]["skipped"].startswith("no Fashion-MNIST files")  # --data was not given


def test_skipped_rows_name_their_reason(smoke):
    report, _, _ = smoke
    steps, torch_part = report["parts"]["steps"], report["parts"]["torch"]
    wrn_rows = [label for label in steps["rows"] if label.startswith("wrn")]
    assert wrn_rows or any(note.startswith("skipped: ") for note in steps["notes"].values())
    if "skipped" in torch_part:
        assert torch_part["skipped"] == "torch is not importable here"
    else:
        (row,) = torch_part["rows"].values()
        assert row["steps_per_s"] > 0 and row["device"] == "cpu"
        assert "lab_over_pytorch" in torch_part or "ratio" in torch_part["notes"]


def test_markdown_section_names_the_device_and_every_part(smoke):
    _, text, out = smoke
    assert text.startswith("## Device check on cpu (1 device) (")
    assert "smoke: numbers mean nothing" in text.splitlines()[0]
    assert [line[4:] for line in text.splitlines() if line.startswith("### ")] == list(PARTS)
    assert "Skipped: no Fashion-MNIST files" in text
    assert sorted(path.name for path in out.iterdir()) == ["device_check.json", "device_check.md"]


def test_markdown_section_names_the_machine_and_the_library_versions(smoke):
    """The section says which machine produced its figures: CPU model and cores, memory, the devices as
    JAX names them, and the versions of the libraries the timings depend on (read here independently)."""
    _, text, _ = smoke
    (line,) = [line for line in text.splitlines() if line.startswith("Machine: ")]
    model_name = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
    cpu = model_name.group(1).strip() if model_name else (platform.processor() or platform.machine())  # x86 or not
    assert line.startswith(f"Machine: {cpu} ({os.cpu_count()} cores, ")
    memory_kib = int(re.search(r"^MemTotal:\s+(\d+) kB$", Path("/proc/meminfo").read_text(), re.MULTILINE).group(1))
    assert f", {memory_kib / 2**20:.0f} GiB of memory); devices: cpu (1 device) (JAX backend `cpu`); " in line
    for name in ("jax", "jaxlib", "flax", "optax", "numpy", "torch"):
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            version = "(not installed)"
        assert f"{name} {version}" in line
    assert line.endswith(f"; Python {'.'.join(map(str, sys.version_info[:3]))}.")
