"""tools/set_repository.py (`make repo URL=... [BRANCH=...]`), always run on a copy of the book in tmp_path.

The real _config.yml, chapters and pages are only read here (and checked unchanged at the end).
"""

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "set_repository.py"
NEW_URL, NEW_BRANCH = "https://github.com/alice-b/gqa.book_2", "dev/colab-1"

spec = importlib.util.spec_from_file_location("set_repository", TOOL)
set_repository = importlib.util.module_from_spec(spec)
spec.loader.exec_module(set_repository)


def _real_files():
    return [ROOT / "_config.yml", *sorted((ROOT / "chapters").glob("*.ipynb")), *sorted(ROOT.glob("*.md"))]


@pytest.fixture(scope="module", autouse=True)
def real_files_stay_untouched():
    """The tool ran only on copies: no file of the real book names this module's repository."""
    yield
    assert not [p for p in _real_files() if p.exists() and NEW_URL in p.read_text()]


@pytest.fixture
def book(tmp_path):
    """A copy of what the tool edits: _config.yml, chapters/*.ipynb and the top-level Markdown pages."""
    (tmp_path / "chapters").mkdir()
    shutil.copy2(ROOT / "_config.yml", tmp_path / "_config.yml")
    for nb in sorted((ROOT / "chapters").glob("*.ipynb")):
        shutil.copy2(nb, tmp_path / "chapters" / nb.name)
    for md in sorted(ROOT.glob("*.md")):
        shutil.copy2(md, tmp_path / md.name)
    return tmp_path


def run(book, *args):
    return subprocess.run([sys.executable, str(TOOL), *args, "--root", str(book)], capture_output=True, text=True)


def snapshot(book):
    return {p.relative_to(book).as_posix(): p.read_bytes() for p in sorted(book.rglob("*")) if p.is_file()}


def setup_cell(nb_path):
    nb = json.loads(nb_path.read_text())
    return "".join(next(c for c in nb["cells"] if c["cell_type"] == "code")["source"])


def test_one_command_points_config_setup_cells_and_pages_at_the_repository(book):
    before = snapshot(book)
    result = run(book, NEW_URL, "--branch", NEW_BRANCH)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load((book / "_config.yml").read_text())
    assert config["repository"]["url"] == NEW_URL and config["repository"]["branch"] == NEW_BRANCH
    chapters = sorted((book / "chapters").glob("*.ipynb"))
    assert chapters
    for nb in chapters:  # the agreement tests/test_book_structure.py checks on the real book
        installs = re.findall(r"git\+(https://github\.com/[\w.-]+/[\w.-]+)@([\w./-]+)", setup_cell(nb))
        assert installs == [(NEW_URL, NEW_BRANCH)], (nb.name, installs)
    intro = (book / "intro.md").read_text()
    assert f"[the repository]({NEW_URL})" in intro
    old_url = yaml.safe_load(before["_config.yml"])["repository"]["url"]
    assert all(old_url not in (book / name).read_text() for name in before if not name.endswith(".ipynb"))
    assert "https://colab.research.google.com/github/alice-b/gqa.book_2/blob/dev/colab-1/chapters/" in result.stdout


def test_only_the_repository_changes_every_other_byte_stays(book):
    before = snapshot(book)
    old = yaml.safe_load(before["_config.yml"])["repository"]
    assert run(book, NEW_URL, "--branch", NEW_BRANCH).returncode == 0
    after = snapshot(book)
    assert set(after) == set(before)
    # _config.yml: the same lines, comments included, but url and branch
    old_lines, new_lines = before["_config.yml"].decode().splitlines(), after["_config.yml"].decode().splitlines()
    changed = [(a, b) for a, b in zip(old_lines, new_lines) if a != b]
    assert len(old_lines) == len(new_lines)
    assert changed == [(f"  url: {old['url']}", f"  url: {NEW_URL}"), (f"  branch: {old['branch']}", f"  branch: {NEW_BRANCH}")]
    # notebooks: one line of the set-up cell differs; the parsed JSON is equal but for that cell's source
    for name in (n for n in before if n.endswith(".ipynb")):
        a, b = before[name].decode(), after[name].decode()
        diff = [(x, y) for x, y in zip(a.splitlines(), b.splitlines()) if x != y]
        assert len(a.splitlines()) == len(b.splitlines()) and len(diff) == 1, (name, diff)
        assert f"git+{old['url']}@{old['branch']}" in diff[0][0] and f"git+{NEW_URL}@{NEW_BRANCH}" in diff[0][1]
        nb_a, nb_b = json.loads(a), json.loads(b)
        first = next(i for i, c in enumerate(nb_a["cells"]) if c["cell_type"] == "code")
        nb_a["cells"][first]["source"] = nb_b["cells"][first]["source"]
        assert nb_a == nb_b, name


def test_idempotent_and_reversible(book):
    original = snapshot(book)
    old = yaml.safe_load(original["_config.yml"])["repository"]
    assert run(book, NEW_URL, "--branch", NEW_BRANCH).returncode == 0
    once = snapshot(book)
    again = run(book, NEW_URL, "--branch", NEW_BRANCH)
    assert again.returncode == 0 and snapshot(book) == once
    assert "0 file(s) updated" in again.stdout
    assert run(book, old["url"], "--branch", old["branch"]).returncode == 0
    assert snapshot(book) == original  # and back, byte for byte


def test_branch_defaults_to_main(book):
    assert run(book, NEW_URL).returncode == 0
    assert yaml.safe_load((book / "_config.yml").read_text())["repository"]["branch"] == "main"
    assert all(f"git+{NEW_URL}@main" in setup_cell(nb) for nb in (book / "chapters").glob("*.ipynb"))


@pytest.mark.parametrize("url", [
    "", "github.com/a/b", "http://github.com/a/b", "git@github.com:a/b.git", "https://github.com/a/b/",
    "https://github.com/a/b.git", "https://gitlab.com/a/b", "https://github.com/a", "https://github.com/a/b/c",
    "https://github.com/-a/b", "https://github.com/a--/b", "https://github.com/a/b c", "https://github.com/a/b@main",
    "https://github.com/OWNER/NAME\n",
])
def test_bad_urls_are_refused_with_a_message_and_exit_2_before_any_write(book, url):
    before = snapshot(book)
    result = run(book, url)
    assert result.returncode == 2
    assert "https://github.com/OWNER/NAME" in result.stderr and repr(url) in result.stderr
    assert snapshot(book) == before
    with pytest.raises(ValueError, match="OWNER/NAME"):
        set_repository.validate_url(url)


@pytest.mark.parametrize("branch", ["", "-x", "a..b", "a b", "x.lock", "feature/", "a//b", "a@{1}", "main;rm"])
def test_bad_branches_are_refused(book, branch):
    before = snapshot(book)
    result = run(book, NEW_URL, "--branch", branch)
    assert result.returncode == 2 and "branch" in result.stderr
    assert snapshot(book) == before


@pytest.mark.parametrize("url", ["https://github.com/a/b", "https://github.com/Some-Org/my.repo_2", "https://github.com/a1/b-c"])
def test_good_urls(url):
    assert set_repository.validate_url(url) == url


def test_a_chapter_without_the_pip_line_is_named_and_nothing_is_written(book):
    nb_path = sorted((book / "chapters").glob("*.ipynb"))[-1]
    nb = json.loads(nb_path.read_text())
    cell = next(c for c in nb["cells"] if c["cell_type"] == "code")
    cell["source"] = ["import gqa_lib\n"]
    nb_path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    before = snapshot(book)
    result = run(book, NEW_URL)
    assert result.returncode == 2 and nb_path.name in result.stderr and "set-up cell" in result.stderr
    assert snapshot(book) == before


def test_url_elsewhere_in_a_notebook_still_changes_only_the_setup_cell(book):
    """The pip line also printed in an output: the JSON is edited, the output left as it was."""
    nb_path = sorted((book / "chapters").glob("*.ipynb"))[0]
    nb = json.loads(nb_path.read_text())
    old = re.search(r"git\+\S+@[\w./-]+", setup_cell(nb_path))[0]
    nb["cells"].append({"cell_type": "markdown", "id": "extra", "metadata": {}, "source": [f"Run `pip install {old}`\n"]})
    nb_path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    assert run(book, NEW_URL).returncode == 0
    edited = json.loads(nb_path.read_text())
    assert f"git+{NEW_URL}@main" in setup_cell(nb_path)
    assert edited["cells"][-1]["source"] == [f"Run `pip install {old}`\n"]
    assert nb_path.read_text().endswith("}\n")


def test_config_without_a_branch_gets_one(book):
    config = book / "_config.yml"
    config.write_text(re.sub(r"\n  branch: \S+", "", config.read_text()))
    assert "branch" not in yaml.safe_load(config.read_text())["repository"]
    assert run(book, NEW_URL, "--branch", "gh").returncode == 0
    assert yaml.safe_load(config.read_text())["repository"] == {
        **yaml.safe_load((ROOT / "_config.yml").read_text())["repository"], "url": NEW_URL, "branch": "gh",
    }


def test_make_repo_runs_the_tool_with_url_and_branch():
    """The Makefile's wiring, as a dry run (`make -n` prints the command; nothing is executed)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    dry = subprocess.run(["make", "-n", "-C", str(ROOT), "repo", f"URL={NEW_URL}", "BRANCH=dev"],
                         capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    assert f'tools/set_repository.py "{NEW_URL}" --branch "dev"' in dry.stdout
    default = subprocess.run(["make", "-n", "-C", str(ROOT), "repo", f"URL={NEW_URL}"], capture_output=True, text=True)
    assert '--branch "main"' in default.stdout
