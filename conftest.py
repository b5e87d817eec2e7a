"""Test-session set-up for the whole suite, notebooks included.

Both settings below reach every notebook kernel the suite starts (kernels inherit
the environment):

- Hermetic caches: the suite never reads or writes the user's cache (``~/.cache/lab``).
  ``LAB_CACHE`` points at a folder made empty for this session, so a stale pretrained
  backbone or compiled program on the machine cannot change a result.
- The CPU: the committed notebook outputs and the tests' expected numbers are
  bit-reproducible on one backend only. Users' runs are not pinned (they take the
  accelerator when JAX sees one). ``LAB_TEST_PLATFORM=cuda`` (any ``JAX_PLATFORMS``
  value) runs the suite on that platform instead, as ``benchmarks/device_check.py``
  does without the notebooks: tests that compare against CPU-made references then agree
  to float tolerance only (a GPU may compute float32 matmuls in TF32 at JAX's default precision,
  other reduction orders), and the notebooks' committed outputs do not reproduce.
"""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

# The prefix that notebooks/sanitize.cfg recognises in printed paths.
CACHE_PREFIX = "lab-cache-"
# Names the JAX platform of a test session other than the CPU (see above).
PLATFORM_VARIABLE = "LAB_TEST_PLATFORM"
# Set (by .ci/run) where every test must run: a skipped test or notebook cell then fails, so that data a machine
# lacks (a missing install step) cannot hide behind a green run. Only a skip whose reason starts with GPU_ONLY stays.
NO_SKIPS_VARIABLE = "LAB_TEST_NO_SKIPS"
GPU_ONLY = "needs a GPU"


def pytest_configure(config):
    cache = tempfile.mkdtemp(prefix=CACHE_PREFIX)
    os.environ["LAB_CACHE"] = cache
    os.environ["JAX_PLATFORMS"] = os.environ.get(PLATFORM_VARIABLE) or "cpu"
    config.add_cleanup(lambda: shutil.rmtree(cache, ignore_errors=True))


# Notebooks that read data files the suite cannot write itself (by number -> text datasets): where the
# files are missing (Debian's fortune packages not installed), they are skipped with the reason, both
# under nbval and in tests/test_notebooks.py.
NOTEBOOK_DATA = {"06": ("fortunes_topics",), "08": ("fortunes_topics", "fortunes_language")}
# Notebooks whose default checkpoint (README, "Pretrained checkpoints") lies beside the repository: nbval runs
# the defaults, so without the folder it is skipped (tests/test_notebooks.py passes a tiny one from tests/data).
NOTEBOOK_CHECKPOINTS = {"08": Path(__file__).resolve().parent.parent / "shared" / "checkpoints" / "all-MiniLM-L6-v2"}


def _missing(dataset: str) -> str | None:
    from lab import data, text

    try:
        text.load_texts(dataset)
    except data.DataNotFoundError as error:
        return str(error).splitlines()[0]
    return None


def pytest_collection_modifyitems(config, items):
    reasons: dict[str, str | None] = {}
    for item in items:
        nbval = item.path.suffix == ".ipynb"
        for prefix, datasets in NOTEBOOK_DATA.items():
            if (nbval and item.path.name.startswith(f"{prefix}_")) or item.nodeid.endswith(f"[{prefix}]"):
                for dataset in datasets:
                    if dataset not in reasons:
                        reasons[dataset] = _missing(dataset)
                    if reasons[dataset]:
                        item.add_marker(pytest.mark.skip(reason=reasons[dataset]))
                        break
        for prefix, folder in NOTEBOOK_CHECKPOINTS.items():
            if nbval and item.path.name.startswith(f"{prefix}_") and not folder.is_dir():
                item.add_marker(pytest.mark.skip(reason=f"its default checkpoint folder {folder} is not there"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    _fail_a_forbidden_skip((yield).get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    _fail_a_forbidden_skip((yield).get_result())


def _fail_a_forbidden_skip(report) -> None:
    if not (report.skipped and os.environ.get(NO_SKIPS_VARIABLE)) or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reason = reason.removeprefix("Skipped: ")
    if not reason.startswith(GPU_ONLY):
        report.outcome = "failed"
        report.longrepr = f"skipped where every test must run ({NO_SKIPS_VARIABLE} is set): {reason}"
