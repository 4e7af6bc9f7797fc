"""Every notebook in notebooks/ runs top to bottom in a real Jupyter kernel (nbclient).

The notebooks check their own results against polars (assert cells), so a notebook that
runs to the end also computed the right answer. Each runs in a fresh kernel started from
this interpreter; a cell may take at most a minute. Outputs are kept cleared in git.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((Path(__file__).parents[2] / "notebooks").glob("*.ipynb"))


def test_there_are_at_least_three_notebooks() -> None:
    names = [p.name for p in NOTEBOOKS]
    assert len(names) >= 3, names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_outputs_are_cleared_in_git(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert not cell.get("outputs"), (
                f"{path.name}: a cell has outputs; clear them before committing"
            )
            assert cell.get("execution_count") is None


@pytest.mark.timeout(300)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path: Path, tmp_path: Path, this_kernel: Any) -> None:
    notebook = nbformat.read(path, as_version=4)
    manager = this_kernel
    client = nbclient.NotebookClient(
        notebook,
        km=manager,
        timeout=60,
        kernel_name="arrowflow-test",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    started = time.monotonic()
    client.execute()
    elapsed = time.monotonic() - started
    errors = [
        o
        for c in notebook.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.output_type == "error"
    ]
    assert not errors
    # Every code cell ran, and the display cells showed something.
    assert all(c.get("execution_count") for c in notebook.cells if c.cell_type == "code")
    html = [
        o for c in notebook.cells for o in c.get("outputs", []) if "text/html" in o.get("data", {})
    ]
    assert html, "no rich output at all"
    # A job's live view carries its text form too, for front ends that show text only.
    for output in html:
        if 'class="arrowflow-job"' in output["data"]["text/html"]:
            text = output["data"].get("text/plain", "")
            assert text.startswith("Job '") and "operator" in text and "rows_in" in text, text
    print(f"{path.name}: {elapsed:.1f} s")
