"""Maintainer tool: normalise chapter metadata and store fresh outputs.

    python tools/execute_notebooks.py chapters/05_*.ipynb    # some chapters
    python tools/execute_notebooks.py                        # every chapter

For each notebook it sets the metadata every chapter needs (Python 3 kernel,
a GPU runtime request for Colab), executes it from a clean kernel in the
chapters/ folder, prints the wall time, and writes it back with outputs, so
that nbval has the stored outputs of cells marked ``# NBVAL_CHECK_OUTPUT``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]

METADATA = {
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
    "accelerator": "GPU",
    "colab": {"provenance": [], "gpuType": "T4"},
}


def normalise(nb: nbformat.NotebookNode) -> None:
    """Give ``nb`` the metadata every chapter carries; drop authoring leftovers."""
    nb.metadata.pop("jupytext", None)
    nb.metadata.update(METADATA)
    for cell in nb.cells:
        cell.metadata.pop("lines_to_next_cell", None)


def execute(path: Path) -> float:
    nb = nbformat.read(path, as_version=4)
    normalise(nb)
    start = time.perf_counter()
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    seconds = time.perf_counter() - start
    nbformat.write(nb, path)
    return seconds


def main(argv: list[str]) -> None:
    paths = [Path(p) for p in argv] or sorted((ROOT / "chapters").glob("*.ipynb"))
    for path in paths:
        print(f"{path.name}: {execute(path):.1f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
