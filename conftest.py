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

# The prefix that notebooks/sanitize.cfg recognises in printed paths.
CACHE_PREFIX = "lab-cache-"
# Names the JAX platform of a test session other than the CPU (see above).
PLATFORM_VARIABLE = "LAB_TEST_PLATFORM"


def pytest_configure(config):
    cache = tempfile.mkdtemp(prefix=CACHE_PREFIX)
    os.environ["LAB_CACHE"] = cache
    os.environ["JAX_PLATFORMS"] = os.environ.get(PLATFORM_VARIABLE) or "cpu"
    config.add_cleanup(lambda: shutil.rmtree(cache, ignore_errors=True))
