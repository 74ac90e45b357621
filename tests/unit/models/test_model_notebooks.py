from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow  # runs notebooks in a kernel

NOTEBOOKS = Path(__file__).resolve().parents[3] / "notebooks"


# the kernel machinery (jupyter_client, zmq) may warn about its own deprecations
@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name", ["fraud", "anomaly"])
def test_notebook_runs_in_small_mode(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIZZASHOP_NOTEBOOK_SMALL", "1")  # the kernel inherits the environment
    path = NOTEBOOKS / f"{name}.ipynb"
    notebook = nbformat.read(path, as_version=4)
    # "python3" resolves to this interpreter (jupyter_client swaps in sys.executable)
    NotebookClient(
        notebook,
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    ).execute()
    text = "\n".join(
        str(output.get("text", ""))
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    )
    assert "small mode: True" in text
    assert "Traceback" not in text
    assert "roc_auc" in text
