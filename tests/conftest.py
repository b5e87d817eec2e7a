"""Fixtures shared by several test modules."""

import json

import pytest


@pytest.fixture(scope="session")
def stale_jupyter_path(tmp_path_factory):
    """A JUPYTER_PATH directory whose ``python3`` kernelspec points at a Python that does
    not exist, as a stale global Jupyter install can leave one: notebooks that lab runs
    must still use the interpreter running the tests."""
    root = tmp_path_factory.mktemp("stale-jupyter")
    spec = root / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": ["/nonexistent/python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Python 3 (elsewhere)",
                "language": "python",
            }
        )
    )
    return root
