"""Re-execute notebooks in place, as they are committed (``make notebooks``).

    python notebooks/execute.py notebooks/0*.ipynb

Each notebook runs from the repository root with papermill, on the CPU (``JAX_PLATFORMS=cpu``:
nbval compares the committed outputs bit for bit, and only the CPU reproduces them; users'
runs take the accelerator), on a fresh empty ``LAB_CACHE`` shared by this batch (the committed outputs never come from a backbone
or dataset cached by older code; nbval's sanitizer recognises its ``lab-cache-*``
name in printed paths), then the volatile
execution metadata (timings, papermill's bookkeeping, saved widget state) is
stripped and consecutive stream outputs are merged, so that ``pytest --nbval``
compares only what the notebook shows.
"""

import os
import shutil
import sys
import tempfile

import nbformat
import papermill


def clean(path: str) -> None:
    notebook = nbformat.read(path, as_version=4)
    for key in ("papermill", "widgets"):
        notebook.metadata.pop(key, None)
    for cell in notebook.cells:
        for key in ("papermill", "execution", "ExecuteTime"):
            cell.metadata.pop(key, None)
        if cell.metadata.get("tags") == []:
            del cell.metadata["tags"]
        if cell.cell_type != "code":
            continue
        merged = []
        for output in cell.outputs:
            if output.output_type == "stream" and merged and merged[-1].output_type == "stream" and merged[-1].name == output.name:
                merged[-1].text += output.text
            else:
                merged.append(output)
        cell.outputs = merged
    nbformat.validate(notebook)
    nbformat.write(notebook, path)


def main(paths: list[str]) -> None:
    cache = tempfile.mkdtemp(prefix="lab-cache-")
    os.environ["LAB_CACHE"] = cache  # the kernels inherit it
    os.environ["JAX_PLATFORMS"] = "cpu"  # likewise: the outputs nbval compares are the CPU's (see above)
    try:
        for path in paths:
            print(f"executing {path}", flush=True)
            papermill.execute_notebook(path, path, kernel_name="python3", progress_bar=False)
            clean(path)
    finally:
        shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
