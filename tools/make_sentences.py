"""Extract the English sentences of gqa_lib/data/sentences/sentences.txt from public-domain texts on PyPI.

The texts are three classics of the Canterbury compression corpus, which the
source distribution of the ``brotli`` package (Google's compression library,
MIT licence for its code) ships as test data in ``tests/testdata/``:

* ``alice29.txt``: Lewis Carroll, *Alice's Adventures in Wonderland* (1865),
  Project Gutenberg's "Millennium Fulcrum Edition 2.9";
* ``plrabn12.txt``: John Milton, *Paradise Lost* (1667), the February 1992
  Project Gutenberg release;
* ``asyoulik.txt``: William Shakespeare, *As You Like It* (first printed 1623).

All three works are in the public domain. Only the authors' text is kept:
title blocks, Project Gutenberg's introduction, chapter/book/act/scene
headings, speaker names and stage directions are dropped.

Run from the repository root (needs pip and PyPI; nothing else)::

    python tools/make_sentences.py                       # downloads the sdist with pip, writes the file
    python tools/make_sentences.py --sdist brotli-1.2.1.tar.gz   # an sdist downloaded before

``pip download --no-deps --no-binary :all: --no-build-isolation brotli==1.2.1``
fetches the source distribution (the wheels do not hold the test data); the
script reads the three files straight from the tarball (nothing is
extracted or executed), splits them into sentences, keeps those of 8 to 40
words, drops repeats, and writes one sentence per line, Alice first, then
Paradise Lost, then As You Like It, in the order of the text. It prints the
sdist's SHA-256 and how many sentences each work gave (recorded in SOURCE.md).
"""

from __future__ import annotations

import argparse
import hashlib
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE, VERSION = "brotli", "1.2.1"
OUT = Path(__file__).resolve().parents[1] / "gqa_lib" / "data" / "sentences" / "sentences.txt"
MIN_WORDS, MAX_WORDS = 8, 40

# A sentence ends at . ! or ? (and any closing quotes or brackets right after),
# and the next one starts with a capital letter or an opening quote.
_SENTENCE_END = re.compile(r"(?<=[.!?])['\")\]]*\s+(?=[`'\"(A-Z])")


def _paragraphs(lines: list[str]) -> list[str]:
    """Blank-line separated paragraphs, each joined into one line."""
    paragraphs, current = [], []
    for line in lines + [""]:
        if line.strip():
            current.append(line.strip())
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    return paragraphs


def alice(text: str) -> list[str]:
    """The paragraphs of the twelve chapters, without chapter headings, titles and the * * * rules."""
    lines = text.splitlines()
    body, skip_title = [], False
    start = next(i for i, line in enumerate(lines) if line.strip() == "CHAPTER I")
    for line in lines[start:]:
        stripped = line.strip()
        if stripped.startswith("CHAPTER "):
            skip_title = True  # the chapter's title is the next non-empty line
            body.append("")
            continue
        if skip_title and stripped:
            skip_title = False
            body.append("")
            continue
        if stripped == "THE END" or set(stripped) <= {"*", " "} and stripped:
            body.append("")
            continue
        body.append(line)
    return _paragraphs(body)


def paradise_lost(text: str) -> list[str]:
    """The twelve books' verse, after Project Gutenberg's introduction, without the 'Book N' headings."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "Book I")
    body = []
    for line in lines[start:]:
        stripped = line.strip()
        if re.fullmatch(r"Book [IVXL]+", stripped) or stripped == "[The End]":
            body.append("")
            continue
        body.append(line)
    # Verse paragraphs are marked by an indent, not by blank lines: each book is one "paragraph" here.
    return _paragraphs(body)


def as_you_like_it(text: str) -> list[str]:
    """Each speech as one paragraph: speaker names, act/scene headings and [stage directions] dropped."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "ACT I")
    speeches, current = [], []
    for line in lines[start:]:
        if not line.strip():
            continue
        if re.match(r"(ACT|SCENE)\b", line):
            if current:
                speeches.append(" ".join(current))
            current = []
            continue
        if not line.startswith("\t"):  # "SPEAKER<TAB>first line": a new speech
            if current:
                speeches.append(" ".join(current))
            current = [line.split("\t", 1)[1].strip()] if "\t" in line else []
        else:
            current.append(line.strip())
    if current:
        speeches.append(" ".join(current))
    cleaned = [re.sub(r"\[[^\]]*\]", " ", s) for s in speeches]  # stage directions, also within a speech
    return [re.sub(r"\s+", " ", s).strip() for s in cleaned if s.strip()]


def sentences(paragraphs: list[str]) -> list[str]:
    """The sentences of 8 to 40 words, Alice's `quotes' written with plain apostrophes."""
    out = []
    for paragraph in paragraphs:
        paragraph = re.sub(r"\s+", " ", paragraph.replace("`", "'")).strip()
        for s in _SENTENCE_END.split(paragraph):
            s = s.strip()
            if MIN_WORDS <= len(s.split()) <= MAX_WORDS:
                out.append(s)
    return out


WORKS = (  # (file in the sdist's tests/testdata, title, author, paragraph extractor)
    ("alice29.txt", "Alice's Adventures in Wonderland", "Lewis Carroll", alice),
    ("plrabn12.txt", "Paradise Lost", "John Milton", paradise_lost),
    ("asyoulik.txt", "As You Like It", "William Shakespeare", as_you_like_it),
)


def _download(folder: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
         "--no-build-isolation", "-d", str(folder), f"{PACKAGE}=={VERSION}"],
        check=True,
    )
    (sdist,) = folder.glob(f"{PACKAGE}-{VERSION}.tar.gz")
    return sdist


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sdist", type=Path, help=f"{PACKAGE}-{VERSION}.tar.gz (default: download it with pip)")
    parser.add_argument("--out", type=Path, default=OUT, help=f"output file (default {OUT})")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        sdist = args.sdist or _download(Path(tmp))
        digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
        seen, lines = set(), []
        with tarfile.open(sdist) as tar:
            for name, title, author, extract in WORKS:
                member = tar.getmember(f"{PACKAGE}-{VERSION}/tests/testdata/{name}")
                text = tar.extractfile(member).read().decode("ascii").replace("\x1a", "")  # DOS end-of-file mark
                kept = [s for s in sentences(extract(text)) if not (s in seen or seen.add(s))]
                lines += kept
                print(f"{name}: {title} ({author}): {len(kept)} sentences")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"{len(lines)} sentences -> {args.out} ({args.out.stat().st_size} bytes); sdist sha256 {digest}")


if __name__ == "__main__":
    main()
