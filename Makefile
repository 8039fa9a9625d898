# Front door. `make demo` runs the main job on the embedded default; `make test` runs the test suite.
PY ?= python3
VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: venv test test-slow lint demo sigma-demo teacher controlnet drill lcm-student app app-screenshots gpu-wheels gpu-report clean-venv

# The venv with the pinned stack, and this checkout installed into it in editable mode (pyproject.toml; no dependency
# resolution beyond requirements.txt), so `import diffusion` and every tools/*.py work from any folder.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install --quiet -r requirements.txt
	$(PYTHON) -m pip install --quiet --no-deps --no-build-isolation -e .
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

# The tiny ControlNet on that teacher (committed as assets/tiny_controlnet/, PixArt-delta §4), with its fixed seed.
controlnet: $(STAMP)
	WANDB_MODE=offline $(PYTHON) tools/make_controlnet.py

# Fault drill (issue 10): SIGKILL, SIGTERM, a killed torchrun rank, a full disk, NaNs, bad features, bad configs and
# checkpoints, and from shards a kill mid-epoch, a corrupt member and a missing shard, injected into tiny training
# runs; ends with "faults injected: N, survived: N, data lost: 0".
drill: $(STAMP)
	$(PYTHON) tools/fault_drill.py

demo: $(STAMP)
	WANDB_MODE=offline $(PYTHON) tools/demo.py

# The embedded default as PixArt-Sigma (issue 18 item 5): the committed tiny teacher fine-tuned into a Sigma-style one
# with and without KV compression, each distilled into a 4-step LCM; make demo's teacher-vs-LCM table for both, side
# by side, in output/sigma_demo/table.md (and the grids output/sigma_demo/kv_vs_none.png, */teacher_vs_lcm.png).
sigma-demo: $(STAMP)
	WANDB_MODE=offline $(PYTHON) tools/sigma_demo.py

# The embedded default's 4-step LCM student (committed as assets/tiny_lcm/): `make lcm-student` distils the committed
# teacher again with configs/lcm/tiny_lcm_student.py (make demo's distillation cut at 100 steps, same seed).
lcm-student: $(STAMP)
	WANDB_MODE=offline $(PYTHON) tools/make_lcm_student.py

# The web app on the embedded default at http://127.0.0.1:7860 (real checkpoints: make app ARGS="--config ... ").
app: $(STAMP)
	GRADIO_ANALYTICS_ENABLED=False $(PYTHON) tools/app.py $(ARGS)

# Screenshots of the app's tabs (docs/images/app_*.png), taken in headless Chromium.
app-screenshots: $(STAMP)
	GRADIO_ANALYTICS_ENABLED=False $(PYTHON) tools/app_screenshots.py --out docs/images $(ARGS)

# What a bare GPU machine (CPython 3.12, x86_64, torch preinstalled) lacks for tools/gpu_report.py, as wheels in .whl/.
GPU_WHEELS := mmengine==0.10.7 addict==2.4.0 termcolor==3.3.0 yapf==0.43.0 platformdirs==4.14.9 \
	diffusers==0.42.1 importlib_metadata==10.2.0 torchao==0.18.0
gpu-wheels: $(STAMP)
	$(PYTHON) -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d .whl $(GPU_WHEELS)

# Every GPU measurement in one run (< 8 min), written to output/gpu_report/report.md.
gpu-report:
	PYTHONPATH=$(CURDIR) python3 tools/gpu_report.py --out output/gpu_report --wheels .whl --compile --cuda-graphs

clean-venv:
	rm -rf $(VENV)
