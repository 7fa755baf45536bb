# Two commands do all set-up on a fresh Debian machine with Python 3.11:
#   make book   -> build the whole book (executing every chapter on the CPU)
#   make test   -> run every test (unit tests, nbval over chapters/, the
#                  rendered book in headless Chromium)
# Other targets: make help.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
JOBS   ?= 1
export PYTHONHASHSEED := 0

.PHONY: help book test unit notebooks browser-test lint bench retrain rerun clean \
        system-deps browser venv

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | \
	  awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)  ## create .venv and install the pinned requirements

system-deps:  ## Debian packages: Fashion-MNIST data and Chromium (needs root)
	@bash .ci/system-deps.sh

book: $(STAMP) system-deps  ## build the book into _build/html (CPU defaults)
	$(VENV)/bin/jupyter-book build . --keep-going
	@echo "open _build/html/index.html"

test: book  ## run every test: unit, notebooks (nbval), the rendered book
	$(VENV)/bin/pytest tests chapters --durations=15
	@echo "all tests passed"

unit: $(STAMP)  ## only the unit tests (fast)
	$(VENV)/bin/pytest tests -m "not book and not slow"

notebooks: $(STAMP)  ## only nbval over chapters/
	$(VENV)/bin/pytest chapters

lint: $(STAMP)  ## ruff over the package, tests and benchmarks
	$(VENV)/bin/ruff check resalign tests benchmarks
	$(VENV)/bin/ruff format --check resalign tests benchmarks

bench: $(STAMP)  ## run the benchmarks (ratios against baselines, one run each)
	$(PY) benchmarks/bench_training.py
	$(PY) benchmarks/bench_spectra.py
	$(PY) benchmarks/bench_scaling.py

rerun: $(STAMP)  ## rerun a chapter: make rerun CHAPTER=02_ra1_line PRESET=paper
	@test -n "$(CHAPTER)" || { $(PY) -m resalign rerun --list; \
	  echo "usage: make rerun CHAPTER=<name> [PRESET=<preset>]"; exit 2; }
	$(PY) -m resalign rerun $(CHAPTER) $(or $(PRESET),cpu)

retrain: $(STAMP)  ## retrain every shipped model in data/store from scratch
	$(PY) -m resalign store remake --all

clean:  ## remove the built book and its execution cache
	rm -rf _build
