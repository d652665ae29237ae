#!/usr/bin/env python3
"""Point the book at the repository it is published from, in one command.

    make repo URL=https://github.com/OWNER/NAME [BRANCH=main]
    python tools/set_repository.py https://github.com/OWNER/NAME --branch main [--root DIR]

The repository is one setting, written in three kinds of place that must agree
(tests/test_book_structure.py checks that they do):

* ``_config.yml``: ``repository.url`` and ``repository.branch`` (the website's
  repository button and the Colab launch buttons,
  https://colab.research.google.com/github/OWNER/NAME/blob/BRANCH/chapters/NN_name.ipynb);
* every chapter's set-up cell (the first code cell of ``chapters/*.ipynb``):
  its ``pip install git+https://github.com/OWNER/NAME@BRANCH`` line, which
  installs ``gqa_lib`` on Colab;
* links to the repository in the Markdown files at the top of the book
  (``intro.md``, ``README.md``, ...): the old URL is replaced by the new one.

Only those strings change: comments and layout of ``_config.yml`` stay, and
each notebook's JSON keeps every other byte (checked after each edit).
Running it twice with the same arguments changes nothing the second time.
A URL or branch of the wrong form is refused with a message (exit status 2)
before any file is touched. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

OWNER = r"[A-Za-z0-9](?:[A-Za-z0-9]|-(?=[A-Za-z0-9])){0,38}"  # GitHub: alphanumerics and inner single hyphens
NAME = r"[A-Za-z0-9._-]{1,100}"
URL_RE = re.compile(rf"https://github\.com/(?P<owner>{OWNER})/(?P<name>{NAME})")
BRANCH_RE = re.compile(r"[A-Za-z0-9._/-]{1,200}")
# the pip line of a set-up cell: git+https://github.com/OWNER/NAME@BRANCH (what follows the branch stays)
PIP_RE = re.compile(r"git\+https://github\.com/[^\s\"'@/]+/[^\s\"'@/]+@[A-Za-z0-9._/-]+")


def validate_url(url: str) -> str:
    """The URL if it is ``https://github.com/OWNER/NAME``; ValueError saying what is wrong otherwise."""
    form = "https://github.com/OWNER/NAME"
    if not isinstance(url, str) or not url:
        raise ValueError(f"give the repository's URL, of the form {form}; got {url!r}")
    match = URL_RE.fullmatch(url)
    if match is None:
        hint = ""
        if url.endswith("/") or url.endswith(".git"):
            hint = " (without a trailing '/' or '.git')"
        elif url.startswith("http://") or url.startswith("git@"):
            hint = " (https, not http or ssh)"
        raise ValueError(f"the repository URL must be of the form {form}{hint}; got {url!r}")
    if match["name"] in (".", "..") or match["name"].endswith(".git"):
        raise ValueError(f"the repository URL must be of the form {form} (without '.git'); got {url!r}")
    return url


def validate_branch(branch: str) -> str:
    """The branch if git would accept it as a branch name (letters, digits, ``. _ / -``); ValueError otherwise."""
    ok = (
        isinstance(branch, str)
        and BRANCH_RE.fullmatch(branch) is not None
        and not branch.startswith(("-", "/", "."))
        and not branch.endswith(("/", ".", ".lock"))
        and ".." not in branch
        and "//" not in branch
        and "/." not in branch
    )
    if not ok:
        raise ValueError(f"the branch must be a git branch name such as 'main' (letters, digits, . _ / -); got {branch!r}")
    return branch


# ---------------------------------------------------------------- _config.yml


def _repository_block(lines: list[str], path: Path) -> tuple[int, int]:
    """(first, end) line indices of the ``repository:`` mapping's indented body in ``lines``."""
    starts = [i for i, line in enumerate(lines) if re.match(r"repository:\s*(#.*)?$", line.rstrip("\r\n"))]
    if len(starts) != 1:
        raise ValueError(f"{path}: expected one top-level 'repository:' mapping; found {len(starts)}")
    first = end = starts[0] + 1
    while end < len(lines) and (lines[end].startswith((" ", "\t")) or not lines[end].strip()):
        end += 1
    while end > first and not lines[end - 1].strip():  # trailing blank lines belong to what follows
        end -= 1
    return first, end


def read_config_repository(config_text: str, path: Path = Path("_config.yml")) -> tuple[str, str]:
    """(url, branch) of ``_config.yml``'s repository mapping (branch "main" when absent)."""
    lines = config_text.splitlines(keepends=True)
    first, end = _repository_block(lines, path)
    values = {}
    for line in lines[first:end]:
        m = re.match(r"\s+(url|branch):\s*(?P<value>[^\s#]+)", line)
        if m:
            values[m[1]] = m["value"].strip("'\"")
    if "url" not in values:
        raise ValueError(f"{path}: the repository mapping has no 'url:'")
    return values["url"], values.get("branch", "main")


def rewrite_config(config_text: str, url: str, branch: str, path: Path = Path("_config.yml")) -> str:
    """``_config.yml``'s text with repository url and branch set; every other character kept."""
    lines = config_text.splitlines(keepends=True)
    first, end = _repository_block(lines, path)
    found = set()
    for i in range(first, end):
        m = re.match(r"(?P<head>\s+(?P<key>url|branch):[ \t]*)(?P<value>[^\s#]+)(?P<tail>.*)", lines[i], re.S)
        if m:
            value = url if m["key"] == "url" else branch
            lines[i] = m["head"] + value + m["tail"]
            found.add(m["key"])
    if "url" not in found:
        raise ValueError(f"{path}: the repository mapping has no 'url:'")
    if "branch" not in found:  # add it under url, indented alike
        i = next(i for i in range(first, end) if re.match(r"\s+url:", lines[i]))
        indent = re.match(r"\s+", lines[i])[0]
        newline = "\r\n" if lines[i].endswith("\r\n") else "\n"
        lines.insert(i + 1, f"{indent}branch: {branch}{newline}")
    text = "".join(lines)
    if read_config_repository(text, path) != (url, branch):  # what a reader of the file will see
        raise ValueError(f"{path}: could not set the repository (url {url}, branch {branch})")
    return text


# ---------------------------------------------------------------- notebooks


def _first_code_cell(nb: dict, path: Path) -> dict:
    cells = [c for c in nb.get("cells", []) if c.get("cell_type") == "code"]
    if not cells:
        raise ValueError(f"{path}: no code cell (the first code cell is the set-up cell)")
    return cells[0]


def _source_text(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def rewrite_notebook(text: str, url: str, branch: str, path: Path = Path("chapter.ipynb")) -> str:
    """A notebook's JSON text with its set-up cell's ``git+URL@BRANCH`` pip line pointing at ``url``/``branch``.

    Only that string changes: the edit is made in the file's own text (so
    indentation, key order and escapes stay as they were) and checked by
    parsing the result, which must equal the original notebook except for the
    set-up cell's source.
    """
    nb = json.loads(text)
    setup = _source_text(_first_code_cell(nb, path))
    found = PIP_RE.findall(setup)
    if len(found) != 1:
        raise ValueError(
            f"{path}: the set-up cell (first code cell) must hold one pip line "
            f"'git+https://github.com/OWNER/NAME@BRANCH'; found {len(found)}"
        )
    old, new = found[0], f"git+{url}@{branch}"
    if old == new:
        return text
    expected = json.loads(text)
    cell = _first_code_cell(expected, path)
    if isinstance(cell["source"], list):
        cell["source"] = [line.replace(old, new) for line in cell["source"]]
    else:
        cell["source"] = cell["source"].replace(old, new)
    # the URL has no character JSON escapes, so it appears verbatim in the file; elsewhere too, perhaps
    encoded_old = json.dumps(old)[1:-1]
    if text.count(encoded_old) == 1:
        result = text.replace(encoded_old, json.dumps(new)[1:-1])
    else:  # also in another cell or an output: edit the JSON, written as nbformat writes it
        result = json.dumps(expected, indent=1, ensure_ascii=False) + "\n"
    if json.loads(result) != expected:
        raise ValueError(f"{path}: editing the set-up cell would change more than its pip line")
    return result


# ---------------------------------------------------------------- Markdown pages


def rewrite_markdown(text: str, old_url: str, old_branch: str, url: str, branch: str) -> str:
    """Links to the old repository (and ``git+OLD@OLD_BRANCH`` lines) pointed at the new one."""
    text = text.replace(f"git+{old_url}@{old_branch}", f"git+{url}@{branch}")
    # the old URL as a whole path prefix: not https://github.com/owner/name-other
    return re.sub(re.escape(old_url) + r"(?![A-Za-z0-9._-])", url, text)


# ---------------------------------------------------------------- the command


def set_repository(root: Path, url: str, branch: str = "main") -> dict[str, bool]:
    """Point ``root``'s book at ``url``/``branch``; {relative path: changed} for every file looked at.

    Everything is validated and computed before the first file is written.
    """
    url, branch = validate_url(url), validate_branch(branch)
    root = Path(root)
    config = root / "_config.yml"
    if not config.is_file():
        raise ValueError(f"{config} not found: --root must be the book's folder")
    config_text = config.read_text(encoding="utf-8")
    old_url, old_branch = read_config_repository(config_text, config)
    planned: dict[Path, tuple[str, str]] = {config: (config_text, rewrite_config(config_text, url, branch, config))}
    notebooks = sorted((root / "chapters").glob("*.ipynb"))
    if not notebooks:
        raise ValueError(f"no chapters/*.ipynb under {root}")
    for nb in notebooks:
        text = nb.read_text(encoding="utf-8")
        planned[nb] = (text, rewrite_notebook(text, url, branch, nb))
    if old_url != url or old_branch != branch:
        for md in sorted(root.glob("*.md")):
            text = md.read_text(encoding="utf-8")
            planned[md] = (text, rewrite_markdown(text, old_url, old_branch, url, branch))
    changed = {}
    for path, (before, after) in planned.items():
        if after != before:
            path.write_text(after, encoding="utf-8", newline="")
        changed[path.relative_to(root).as_posix()] = after != before
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tools/set_repository.py",
        description="Set the book's repository in _config.yml, every chapter's set-up cell and the top-level pages.",
    )
    parser.add_argument("url", help="https://github.com/OWNER/NAME")
    parser.add_argument("--branch", default="main", help="the branch Colab opens and pip installs from (default: main)")
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1],
                        help="the book's folder (default: this repository)")
    args = parser.parse_args(argv)
    try:
        changed = set_repository(args.root, args.url, args.branch)
    except (ValueError, OSError) as err:
        print(f"set_repository: error: {err}", file=sys.stderr)
        return 2
    for path, did in changed.items():
        if did:
            print(f"updated   {path}")
    unchanged = sum(not did for did in changed.values())
    owner_name = args.url.split("github.com/", 1)[1]
    print(f"repository: {args.url} (branch {args.branch}); {sum(changed.values())} file(s) updated, {unchanged} already so")
    print(f"Colab opens chapters at https://colab.research.google.com/github/{owner_name}/blob/{args.branch}/chapters/NN_name.ipynb")
    return 0


if __name__ == "__main__":
    sys.exit(main())
