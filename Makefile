# kd_helpers: `make demo` runs the main job, `make test` what CI runs, `make lab` opens the notebooks.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kd_installed
PYTHON ?= python3
# torch is installed first when the venv has none: the tested version. Without an NVIDIA GPU (no nvidia-smi) it
# comes from PyTorch's CPU index when that is reachable (about 200 MB instead of several GB of CUDA libraries);
# where pip finds a local wheel (this project's CI) or the index is unreachable, pip's own sources decide.
# Override: make setup TORCH="torch==2.13.0" TORCH_INDEX="--index-url https://download.pytorch.org/whl/cu128"
TORCH ?= torch==2.13.0
TORCH_INDEX ?= $(shell command -v nvidia-smi >/dev/null 2>&1 || ! curl -fs -m 3 -o /dev/null \
	https://download.pytorch.org/whl/cpu/torch/ 2>/dev/null || echo --index-url https://download.pytorch.org/whl/cpu)
# The Python versions `make setup` was run and tested with (README: Set-up).
PY_SUPPORTED := 3.11 3.12
PYTEST_ARGS ?=

.PHONY: setup lock demo compare test lint unit nbtest notebooks sweep bench lab slides release clean

setup: $(STAMP)

$(STAMP): requirements.txt constraints.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) scripts/check_python.py $(PY_SUPPORTED)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)" $(TORCH_INDEX)
	$(PY) -m pip install -q -c constraints.txt -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

# Re-pin constraints.txt from the current .venv (after a deliberate upgrade that passed make test).
lock: setup
	(head -n 2 constraints.txt; $(PY) -m pip freeze --exclude-editable | sed -E 's/^torch==([0-9.]+)\+cpu$$/torch==\1/') > constraints.txt.new
	mv constraints.txt.new constraints.txt

demo: setup
	$(PY) -m kd_helpers distill

lint: setup
	$(PY) -m ruff check kd_helpers tests benchmarks scripts notebooks

unit: setup
	KD_FAST=1 $(PY) -m pytest -q tests $(PYTEST_ARGS)

nbtest: setup
	KD_FAST=1 $(PY) -m pytest -q --nbval-lax --nbval-current-env -p no:randomly notebooks $(PYTEST_ARGS)

test: lint
	KD_FAST=1 $(PY) -m pytest -q tests --nbval-lax --nbval-current-env notebooks $(PYTEST_ARGS)
	@test -x /usr/bin/chromium || echo "make test: skipped the real-browser test (tests/test_browser.py): Chromium is missing; install it with: apt-get install -y chromium"

# Re-execute every notebook in full mode, in place (committed outputs come from this).
notebooks: setup
	KD_FAST=0 $(PY) scripts/run_notebooks.py

# KD vs CE-only vs augmentation alone, tiny student, 3 seeds, test split (the numbers in README.md).
compare: setup
	$(PY) -m kd_helpers compare

# The 4 x 4 temperature/alpha sweep (3 seeds) that notebook 04 ships with.
sweep: setup
	$(PY) -m kd_helpers sweep

bench: setup
	$(PY) benchmarks/bench_distill.py

lab: setup
	$(PY) -m jupyter lab notebooks/

# Student versions of the exercises (nbgrader; stubs in place of the answers): notebooks/release/. CI checks both
# directions (tests/test_release.py): the solutions pass their tests, the student versions fail every one.
release: setup
	$(PY) scripts/release.py

# The main notebooks as reveal.js slides (each cell's RISE slideshow metadata, the committed outputs): slides/*.html
slides: setup
	$(PY) -m jupyter nbconvert --to slides --output-dir slides notebooks/0[1-5]_*.ipynb

clean:
	rm -rf outputs tests/artifacts .pytest_cache
