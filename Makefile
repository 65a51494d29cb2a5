# spikehijack: the two commands are `make reproduce` and `make test`; both create the venv when missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
EXTRAS := real,notebooks,dev,ray,book
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
SANITIZE := tests/nbval_sanitize.cfg
REGEN := $(CURDIR)/build/regen
STRIP := $(PY) -m nbstripout --keep-output --keep-count \
	--extra-keys "metadata.papermill metadata.widgets cell.metadata.papermill cell.metadata.execution"

# Pinned threads and offline model loading (the quick profile computes in float64: spikehijack/device.py).
export OMP_NUM_THREADS=2
export MKL_NUM_THREADS=2
export PYTHONHASHSEED=0
export HF_HUB_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false
export RAY_USAGE_STATS_ENABLED=0

.PHONY: venv reproduce paper test lint bench html clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

venv: $(VENV)/.installed

## Execute every notebook in order with papermill (quick profile), in place, then strip run metadata.
reproduce: venv
	@for nb in $(NOTEBOOKS); do \
		echo "== $$nb"; \
		$(PY) -m papermill --cwd notebooks -k python3 --no-progress-bar $$nb $$nb || exit 1; \
	done
	$(STRIP) $(NOTEBOOKS)
	$(PY) scripts/update_readme_results.py --sync

## The paper profile: executed copies under reports/paper/, trained weights and per-run tables under
## reports/paper/cache/ (committed: re-running re-evaluates without retraining; the notebooks stay quick). Notebooks
## with a device parameter get device=auto (the GPU when there is one); each notebook's wall time is printed.
paper: venv
	@mkdir -p reports/paper
	@total=$$(date +%s); for nb in $(NOTEBOOKS); do \
		dev=; grep -q '"device = ' $$nb && dev="-p device auto"; \
		echo "== $$nb (profile=paper $$dev)"; start=$$(date +%s); \
		$(PY) -m papermill --cwd notebooks -k python3 --no-progress-bar -p profile paper $$dev \
			$$nb reports/paper/$$(basename $$nb) || exit 1; \
		echo "   $$(basename $$nb): $$(( $$(date +%s) - start )) s"; \
	done; echo "== make paper: $$(( $$(date +%s) - total )) s"
	$(STRIP) reports/paper/*.ipynb

lint: venv
	$(PY) -m ruff check spikehijack tests benchmarks scripts

## Lint, unit and property tests, doctests; then the regeneration check (README, "Results that regenerate on any
## machine"): nbval reruns every notebook from empty caches into $(REGEN) and compares each stored output, words
## and integers exactly, decimals within tolerance (tests/nbval_numbers.py); then every result table the rerun
## wrote is compared with its committed copy in reports/quick/ (spikehijack/regeneration.py).
test: venv lint
	$(PY) -m pytest tests --doctest-modules spikehijack -k "not regenerated"
	# ^ this run includes the browser test, tests/test_book.py: it builds the book (make html) when build/html is
	#   missing or stale and opens every page in headless Chromium (skipped, saying how to run it, without one)
	rm -rf $(REGEN)
	SPIKEHIJACK_RESULTS=$(REGEN) $(PY) -m pytest -p tests.nbval_numbers --nbval --nbval-current-env \
		--nbval-sanitize-with $(SANITIZE) $(NOTEBOOKS)
	SPIKEHIJACK_RESULTS=$(REGEN) $(PY) -m pytest tests/test_regeneration.py -k regenerated

bench: venv
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) benchmarks/bench_scoring.py
	$(PY) benchmarks/bench_sweeps.py

## The book (Jupyter Book 1.x, offline, MathJax served from the build): book/ + the executed notebooks -> build/html.
html: venv
	$(PY) scripts/build_book.py --out build/html

clean:
	rm -rf build .pytest_cache .ruff_cache .hypothesis results/.tmp
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
