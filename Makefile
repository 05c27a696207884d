# The README's commands. Each target does all set-up itself (creates .venv, installs, idempotent via a stamp).
#   make demo   start the embedded stack and run the main job on the tiny preset over the bundled real photos
#   make test   run the whole test suite
# GPU machines: install your CUDA torch (+ matching torchvision) into .venv first, then `make setup TORCH_SPEC=`.

PYTHON     ?= python3
VENV       := .venv
BIN        := $(VENV)/bin
STAMP      := $(VENV)/.installed
# The CPU build available from the pre-configured wheel folder; torchvision 0.28.0 is the only match (a CUDA build
# that nsarm/compat.py makes importable on CPU).
TORCH_SPEC ?= torch==2.13.0 torchvision==0.28.0
PYTEST_ARGS ?=

# Debian packages the browser-screenshot and PostgreSQL tests need (the demo's screenshots need chromium).
SYSTEM_PKGS := chromium postgresql

.PHONY: setup system-deps test demo lint stack-up stack-down stack-status clean-state

setup: $(STAMP) system-deps

# Installs what is missing when we are root with apt-get (CI, containers); otherwise prints the command and goes on:
# the tests that need these packages then skip, saying which package is missing.
system-deps:
	@if command -v chromium >/dev/null && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(SYSTEM_PKGS); \
	else echo "note: missing Debian packages; run: sudo apt-get install $(SYSTEM_PKGS)"; fi

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(if $(strip $(TORCH_SPEC)),$(BIN)/pip install $(TORCH_SPEC))
	$(BIN)/pip install -e ".[dev]"
	# BasicSR, the reference implementation our degradation is tested against: basicsr-fixed (1.4.2 with the
	# torchvision.functional_tensor import fixed), without its opencv-python/tb-nightly requirements.
	$(BIN)/pip install addict future lmdb yapf
	$(BIN)/pip install --no-deps --no-build-isolation basicsr-fixed==1.4.2
	# pyiqa (CLIPIQA/MUSIQ/MANIQA/TOPIQ) and facexlib without their metadata's opencv-python/bitsandbytes/tensorboard;
	# their real runtime imports are in pyproject.toml (see nsarm/eval/metrics.py).
	$(BIN)/pip install --no-deps pyiqa==0.1.16 facexlib==0.3.0
	$(BIN)/python -c "from nsarm.compat import ensure_torchvision_importable as shim; shim(); import torch, ray, prefect, mlflow, webdataset, basicsr.utils; print('environment OK: torch', torch.__version__)"
	touch $(STAMP)

test: $(STAMP) system-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: $(STAMP) system-deps
	$(BIN)/python -m flows.demo

lint: $(STAMP)
	$(BIN)/ruff check .

stack-up: $(STAMP)
	$(BIN)/nsarm stack up

stack-down: $(STAMP)
	$(BIN)/nsarm stack down

stack-status: $(STAMP)
	$(BIN)/nsarm stack status
