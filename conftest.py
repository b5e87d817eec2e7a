"""Test-session set-up for the whole suite, notebooks included.

Both settings below reach every notebook kernel the suite starts (kernels inherit
the environment):

- Hermetic caches: the suite never reads or writes the user's cache (``~/.cache/lab``).
  ``LAB_CACHE`` points at a folder made empty for this session, so a stale pretrained
  backbone or compiled program on the machine cannot change a result.
- The CPU, always: the committed notebook outputs and the tests' expected numbers are
  bit-reproducible on one backend only.
"""

import os
import shutil
import tempfile

# The prefix that notebooks/sanitize.cfg recognises in printed paths.
CACHE_PREFIX = "lab-cache-"


def pytest_configure(config):
    cache = tempfile.mkdtemp(prefix=CACHE_PREFIX)
    os.environ["LAB_CACHE"] = cache
    os.environ["JAX_PLATFORMS"] = "cpu"
    config.add_cleanup(lambda: shutil.rmtree(cache, ignore_errors=True))
