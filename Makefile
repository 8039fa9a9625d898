# Front door. `make demo` runs the main job on the embedded default; `make test` runs the test suite.
PY ?= python3
VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: venv test test-slow lint demo teacher gpu-wheels gpu-report clean-venv

$(STAMP): requirements.txt
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

venv: $(STAMP)

# lint first, so a formatting slip fails CI like a failing test
test: $(STAMP) lint
	WANDB_MODE=disabled $(PYTHON) -m pytest -q -m "not slow" tests

# Tests marked slow (more than ~30 s each on 2 cores): run on demand, not in CI.
test-slow: $(STAMP)
	WANDB_MODE=disabled $(PYTHON) -m pytest -q -m slow tests

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

# The tiny teacher (committed as assets/tiny_teacher/); `make teacher` rebuilds it from scratch with its fixed seed.
teacher: $(STAMP)
	WANDB_MODE=offline $(PYTHON) tools/make_teacher.py

demo: $(STAMP)
	WANDB_MODE=offline $(PYTHON) tools/demo.py

# What a bare GPU machine (CPython 3.12, x86_64, torch preinstalled) lacks for tools/gpu_report.py, as wheels in .whl/.
GPU_WHEELS := mmengine==0.10.7 addict==2.4.0 termcolor==3.3.0 yapf==0.43.0 platformdirs==4.14.9 \
	diffusers==0.42.1 importlib_metadata==10.2.0 torchao==0.18.0
gpu-wheels: $(STAMP)
	$(PYTHON) -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d .whl $(GPU_WHEELS)

# Every GPU measurement in one run (< 8 min), written to output/gpu_report/report.md.
gpu-report:
	python3 tools/gpu_report.py --out output/gpu_report --wheels .whl

clean-venv:
	rm -rf $(VENV)
