"""gqa_lib packages cleanly: SPDX license, no build warnings, package data (toy results, benchmark results) in the wheel."""

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_license_is_an_spdx_string_with_a_setuptools_that_reads_it():
    assert PYPROJECT["project"]["license"] == "MIT"  # PEP 639; a {text = ...} table is deprecated
    assert "setuptools>=77" in PYPROJECT["build-system"]["requires"]


def test_gitignore_covers_build_outputs():
    ignored = {line.strip() for line in (ROOT / ".gitignore").read_text().splitlines()}
    for entry in ("build/", "dist/", ".hypothesis/"):
        assert entry in ignored, entry


def _sources(dest: Path) -> Path:
    """What a clean clone holds for building gqa_lib: pyproject.toml, README.md and the package (no caches)."""
    dest.mkdir()
    shutil.copy2(ROOT / "pyproject.toml", dest)
    shutil.copy2(ROOT / "README.md", dest)
    shutil.copytree(ROOT / "gqa_lib", dest / "gqa_lib", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def test_wheel_builds_cleanly_and_ships_the_data(tmp_path):
    import setuptools

    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"setuptools {setuptools.__version__} here; the build asks for >= 77")
    src = _sources(tmp_path / "src")
    (src / "gqa_lib" / "data" / "benchmarks" / "test-gpu.json").write_text(
        '{"benchmark": "sweep", "device": "Test GPU", "rows": []}\n'
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}  # its own "warning:" lines
    out = tmp_path / "wheel"
    # --no-build-isolation: this environment's setuptools, no download
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v", "-w", str(out), str(src)],
        capture_output=True, text=True, env=env,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    log = build.stdout + build.stderr
    # pip's notes about this machine's extra package folders are not the build's
    warnings = [line for line in log.splitlines()
                if re.search(r"\bwarning\b|deprecat|^\s*!!\s*$", line, re.I) and "WARNING: Location" not in line]
    assert not warnings, "\n".join(warnings)
    (wheel,) = out.glob("gqa_lib-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "gqa_lib/data/benchmarks/test-gpu.json" in names
    assert "gqa_lib/data/benchmarks/README.md" not in names  # only results ship
    assert {"gqa_lib/data/gqa_toy/grid.json", "gqa_lib/data/gqa_toy/pretrained_seed0.safetensors"} <= names
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: MIT" in metadata
