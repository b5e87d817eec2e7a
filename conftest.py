"""Test-session set-up for the whole suite, notebooks included.

Hermetic caches: the suite never reads or writes the user's cache (``~/.cache/lab``).
Every test, and every notebook kernel the suite starts (kernels inherit the
environment), sees ``LAB_CACHE`` pointing at a folder made empty for this session, so
a stale pretrained backbone or compiled program on the machine cannot change a result.
"""

import os
import shutil
import tempfile

# The prefix that notebooks/sanitize.cfg recognises in printed paths.
CACHE_PREFIX = "lab-cache-"


def pytest_configure(config):
    cache = tempfile.mkdtemp(prefix=CACHE_PREFIX)
    os.environ["LAB_CACHE"] = cache
    config.add_cleanup(lambda: shutil.rmtree(cache, ignore_errors=True))
