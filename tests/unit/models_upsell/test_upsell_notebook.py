from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow  # runs a notebook in a kernel

NOTEBOOK = Path(__file__).resolve().parents[3] / "notebooks" / "upsell.ipynb"


def test_notebook_runs_in_small_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIZZASHOP_NOTEBOOK_SMALL", "1")  # the kernel inherits the environment
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook,
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    ).execute()
    outputs = [
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    ]
    assert not [o for o in outputs if "Traceback" in o]
    assert any("small mode: True" in o for o in outputs)
    assert any("identical suggestions: True" in o for o in outputs)
