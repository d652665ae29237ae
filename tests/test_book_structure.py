"""The book's notebooks: listed, set up for Colab, and free of stored errors."""

import ast
import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
CHAPTERS = sorted((ROOT / "chapters").glob("*.ipynb"))


def toc_files():
    """Chapter notebooks listed in the toc (pages outside chapters/ are plain markdown)."""
    return [c["file"] for part in TOC["parts"] for c in part["chapters"] if c["file"].startswith("chapters/")]


def load(path):
    return json.loads(path.read_text())


def test_every_chapter_is_in_the_toc_and_every_toc_entry_exists():
    assert CHAPTERS, "no chapters found"
    listed = toc_files()
    assert sorted(listed) == sorted(f"chapters/{p.stem}" for p in CHAPTERS)
    for entry in listed:
        assert (ROOT / f"{entry}.ipynb").exists(), entry


def test_repository_and_launch_buttons_configured():
    assert CONFIG["repository"]["url"].startswith("https://github.com/")
    assert CONFIG["repository"]["branch"] == "main"
    assert CONFIG["launch_buttons"]["colab_url"] == "https://colab.research.google.com"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_first_code_cell_is_the_setup_cell_naming_the_configured_repository(path):
    cells = [c for c in load(path)["cells"] if c["cell_type"] == "code"]
    setup = "".join(cells[0]["source"])
    url = CONFIG["repository"]["url"]
    installs = re.findall(r"git\+(https://github\.com/[\w.-]+/[\w.-]+)@([\w./-]+)", setup)
    assert installs == [(url, CONFIG["repository"]["branch"])], installs
    assert '"google.colab" in sys.modules' in setup
    assert "enable_custom_widget_manager()" in setup
    assert "gqa_lib.pick_device()" in setup


@pytest.mark.parametrize("page", sorted(ROOT.glob("*.md")), ids=lambda p: p.name)
def test_pages_name_the_configured_repository(page):
    """intro.md, README.md: `make repo URL=...` (tools/set_repository.py) rewrites these with the config."""
    url, branch = CONFIG["repository"]["url"], CONFIG["repository"]["branch"]
    text = page.read_text()
    installs = re.findall(r"git\+(https://github\.com/[\w.-]+/[\w.-]+)@([\w./-]+)", text)
    installs = [i for i in installs if i[0] != "https://github.com/OWNER/NAME"]  # the README's pattern
    assert all(found == (url, branch) for found in installs), installs
    # a link whose text says "repository" ([the repository](https://github.com/...)) goes to ours
    links = re.findall(r"\[[^\]]*\brepository\b[^\]]*\]\((https://github\.com/[^)\s]*)\)", text, re.I)
    assert all(link.rstrip("/") == url or link.startswith(url + "/") for link in links), links


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_notebook_metadata_asks_colab_for_a_gpu_and_python3(path):
    meta = load(path)["metadata"]
    assert meta["accelerator"] == "GPU"
    assert meta["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_no_stored_error_outputs(path):
    for cell in load(path)["cells"]:
        for out in cell.get("outputs", []):
            assert out["output_type"] != "error", "".join(cell["source"])[:80]


HIDDEN = {"hide-input", "remove-input", "hide-cell", "remove-cell"}


def is_check_cell(source: str) -> bool:
    """A cell that only checks: it opens with a "# Check..." comment, or it asserts and shows nothing (its
    statements are asserts, assignments and imports: no print, no figure, no definition the reader should see)."""
    if source.lstrip().lower().startswith("# check"):
        return True
    try:
        body = ast.parse(source).body
    except SyntaxError:  # IPython magics
        return False
    quiet = (ast.Assert, ast.Assign, ast.AnnAssign, ast.AugAssign, ast.Import, ast.ImportFrom)
    return any(isinstance(node, ast.Assert) for node in body) and all(isinstance(node, quiet) for node in body)


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_check_cells_are_hidden_on_the_website(path):
    """Assertion-only cells still run under nbval, but the website folds their input away."""
    shown = [
        "".join(c["source"])[:80]
        for c in load(path)["cells"]
        if c["cell_type"] == "code"
        and is_check_cell("".join(c["source"]))
        and not HIDDEN & set(c["metadata"].get("tags", []))
    ]
    assert not shown, f"check cells without a hide-input tag: {shown}"


def test_check_cell_rule_has_teeth():
    assert is_check_cell("assert 1 + 1 == 2\nassert True, 'x'")
    assert is_check_cell("# Checks of the numbers in the solutions above.\nx = 1\nassert x == 1")
    assert is_check_cell("x = 1\nassert x == 1")
    assert not is_check_cell("x = 1\nprint(x)\nassert x == 1")
    assert not is_check_cell("def f():\n    return 1\nassert f() == 1")
    assert not is_check_cell("x = 1")
    assert not is_check_cell("print(1)")
