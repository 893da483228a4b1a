# hiresmed-nb: `make reproduce` runs the quick study; `make test` runs the tests.
# Both create .venv on first use (Python 3.11) from the lock; a stamp per variant makes later calls
# install nothing. `make GPU=1 <target>` installs the GPU variant instead: TensorFlow with CUDA
# (requirements-gpu.txt) and Horovod with NCCL operations. `make lock` regenerates both locks.

PYTHON ?= python3.11
VENV := .venv
PY ?= $(VENV)/bin/python
export TF_CPP_MIN_LOG_LEVEL ?= 2
# The user `make lab` runs as: Jupyter refuses root unless told --allow-root.
USER_ID ?= $(shell id -u)

# Where GPU=1 looks for the CUDA 12 toolkit and NCCL (Horovod's own variables).
CUDA_HOME ?= /usr/local/cuda
HOROVOD_NCCL_HOME ?= /usr

HOROVOD_BUILD := HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_PYTORCH=1 \
	HOROVOD_WITHOUT_MXNET=1 HOROVOD_WITHOUT_MPI=1 CMAKE_POLICY_VERSION_MINIMUM=3.5
ifeq ($(GPU),1)
VARIANT := gpu
LOCK := requirements-gpu.txt
OTHER_TENSORFLOW := tensorflow-cpu
HOROVOD_BUILD += HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_CUDA_HOME=$(CUDA_HOME) \
	HOROVOD_NCCL_HOME=$(HOROVOD_NCCL_HOME)
HOROVOD_NEEDS := TensorFlow Gloo NCCL
else
VARIANT := cpu
LOCK := requirements.txt
OTHER_TENSORFLOW := tensorflow
HOROVOD_NEEDS := TensorFlow Gloo
endif
STAMP := $(VENV)/.installed-$(VARIANT)
BYTECODE_STAMP := $(VENV)/.bytecode-$(VARIANT)
# The variant's TensorFlow as pyproject.toml declares it (its `cpu` or `gpu` extra).
TENSORFLOW := $(shell sed -n 's/^$(VARIANT) = \["\([^"]*\)"\]/\1/p' pyproject.toml)
# The pip the lock pins (pip-tools needs it), installed before the lock itself.
PIP_VERSION := $(shell sed -n 's/^pip==\([^ ]*\).*/\1/p' $(LOCK))
WITH_VENV_PATH := PATH="$(dir $(abspath $(PY))):$$PATH"

# Horovod is rebuilt only when the TensorFlow it compiles against changes (variant or version).
TENSORFLOW_PIN := $(shell sed -n 's/^\(tensorflow\(-cpu\)\{0,1\}\)==\([^ ]*\).*/\1-\3/p' $(LOCK))
HOROVOD_STAMP := $(VENV)/.horovod-$(TENSORFLOW_PIN)

.PHONY: venv install install-lock install-project horovod bytecode check-gpu-build lock test test-fast \
	reproduce lab tensorboard lint format

venv: $(STAMP) $(BYTECODE_STAMP)

# One variant per venv: the other's stamp goes (and install-lock swaps the TensorFlow wheel).
$(STAMP): $(LOCK) requirements-horovod.txt pyproject.toml
ifeq ($(VARIANT),gpu)
	$(MAKE) check-gpu-build
endif
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	rm -f $(VENV)/.installed $(VENV)/.installed-*
	$(MAKE) install-lock
	$(MAKE) $(HOROVOD_STAMP)
	$(MAKE) install-project
	touch $@

# Python's bytecode for every installed module, written once: pip writes none where
# PYTHONDONTWRITEBYTECODE is set (as on this project's VMs), and then every kernel and engine
# recompiles TensorFlow from source when it starts (import 13.5 s instead of 4.7 s here).
$(BYTECODE_STAMP): $(STAMP)
	$(MAKE) bytecode
	touch $@

bytecode:
	$(PY) -m compileall -q -j 0 $$($(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") \
		|| echo "compileall: some files did not compile; Python compiles those in memory on import"

$(HOROVOD_STAMP): requirements-horovod.txt
	rm -f $(VENV)/.horovod-*
	$(MAKE) horovod
	touch $@

# Everything into the environment of $(PY), Horovod always rebuilt (a conda environment:
# `make install PY=python`).
install:
ifeq ($(VARIANT),gpu)
	$(MAKE) check-gpu-build
endif
	$(MAKE) install-lock
	$(MAKE) horovod
	$(MAKE) install-project
	$(MAKE) bytecode

# The variant's lock, after the pip it pins; the other variant's TensorFlow wheel goes first.
install-lock:
	@echo "Installing the $(VARIANT) variant from $(LOCK): $(TENSORFLOW), Horovod with $(HOROVOD_NEEDS)"
	$(PY) -m pip install --quiet pip==$(PIP_VERSION)
	if $(PY) -m pip show --quiet $(OTHER_TENSORFLOW) >/dev/null 2>&1; then \
		$(PY) -m pip uninstall --quiet --yes $(OTHER_TENSORFLOW); fi
	$(PY) -m pip install --quiet -r $(LOCK)

# This package (editable) and the `hiresmed` kernel, whose environment silences TensorFlow's INFO
# lines in notebooks and in the engines they start.
install-project:
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name hiresmed --display-name "Python 3 (hiresmed)" \
		--env TF_CPP_MIN_LOG_LEVEL 2

# Horovod compiles against the TensorFlow already installed (about 3-5 minutes on 2 cores); its
# dependencies come from the lock, so only the hash-checked source archive is installed here.
horovod:
	$(WITH_VENV_PATH) $(HOROVOD_BUILD) $(PY) -m pip install --quiet --no-build-isolation \
		--no-cache-dir --no-deps --force-reinstall -r requirements-horovod.txt
	@built="$$($(WITH_VENV_PATH) horovodrun --check-build)"; \
	for part in $(HOROVOD_NEEDS); do \
		echo "$$built" | grep -q "\[X\] $$part" || { \
			echo "Horovod was built without $$part:"; echo "$$built"; exit 1; } >&2; \
	done

# TensorFlow 2.15 is built for CUDA 12.2, so Horovod's NCCL operations need a CUDA 12 toolkit
# and NCCL's header and library; name what is missing before anything is installed.
NVCC_VERSION = $(shell $(CUDA_HOME)/bin/nvcc --version 2>/dev/null \
	| sed -n 's/.*release \([0-9.]*\),.*/\1/p')
NCCL_HEADER = $(firstword $(wildcard $(HOROVOD_NCCL_HOME)/include/nccl.h \
	$(CUDA_HOME)/include/nccl.h /usr/include/nccl.h))
NCCL_LIBRARY = $(firstword $(wildcard $(addsuffix /libnccl*.[as]*,$(HOROVOD_NCCL_HOME)/lib \
	$(HOROVOD_NCCL_HOME)/lib64 $(CUDA_HOME)/lib64 /usr/lib/x86_64-linux-gnu)))

check-gpu-build:
	@missing=""; \
	case "$(NVCC_VERSION)" in 12.*) ;; *) missing="$$missing\n  - the CUDA 12 toolkit:\
	 $(CUDA_HOME)/bin/nvcc is $(or $(NVCC_VERSION),absent) (set CUDA_HOME to a CUDA 12 install)";; \
	esac; \
	[ -n "$(NCCL_HEADER)" ] && [ -n "$(NCCL_LIBRARY)" ] || missing="$$missing\n  - NCCL 2:\
	 nccl.h and libnccl under $(HOROVOD_NCCL_HOME) or $(CUDA_HOME) (set HOROVOD_NCCL_HOME;\
	 Debian/Ubuntu: libnccl-dev from NVIDIA's CUDA repository)"; \
	if [ -n "$$missing" ]; then \
		printf "make GPU=1 stops before installing anything. Building Horovod with NCCL\
	 GPU operations for TensorFlow 2.15 needs:$$missing\nWithout them, run make without\
	 GPU=1 for the CPU variant.\n" >&2; exit 1; fi

# Regenerate both locks from pyproject.toml ([tool.pip-tools] holds the options), keeping every
# pin that still fits: LOCK_ARGS="--upgrade-package NAME" or "--upgrade" moves them. The GPU lock
# is constrained to the CPU lock's versions, so the variants differ only in TensorFlow and CUDA.
LOCK_ARGS ?=
lock: | $(VENV)/.installed-$(VARIANT)
	CUSTOM_COMPILE_COMMAND="make lock" $(VENV)/bin/pip-compile --quiet $(LOCK_ARGS) \
		--extra cpu --extra horovod --extra dev -o requirements.txt pyproject.toml
	CUSTOM_COMPILE_COMMAND="make lock" $(VENV)/bin/pip-compile --quiet $(LOCK_ARGS) \
		--extra gpu --extra horovod --extra dev -c requirements.txt -o requirements-gpu.txt \
		pyproject.toml

# Three workers (pytest-xdist), each file on one, longest files first (tests/conftest.py): on 2
# cores one process leaves a core idle about 40 % of the time (waits for engines, ssh, Slurm), two
# workers 13 %, three 8 to 10 %, four 7 % but a kernel start timed out once (README). 0: one process.
TEST_WORKERS ?= 3
test: venv
	$(PY) -m pytest $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

# After every edit: no kernel, cluster, engine, training or dataset generation (markers in
# pyproject.toml); `make test` runs these and every other test.
FAST_TESTS := not notebook and not distributed and not multihost and not slurm and not trains \
	and not dataset
# Two workers: a third gains nothing here (432 tests, 39-43 s either way, 2 alternating runs each).
FAST_TEST_WORKERS ?= 2
test-fast: venv
	$(PY) -m pytest -m "$(FAST_TESTS)" $(if $(filter-out 0,$(FAST_TEST_WORKERS)),-n $(FAST_TEST_WORKERS))

# Without a GPU the quick study is packed on 2 CPU slots (on a VM without AVX-512: 19 min 25 s
# against 24 min 27 s one run at a time, README); with GPUs the runner packs it one GPU per slot.
GPUS_FOUND := $(or $(wildcard /proc/driver/nvidia/gpus/*),$(shell nvidia-smi -L 2>/dev/null))
REPRODUCE_SLOTS ?= $(if $(GPUS_FOUND),,2)
reproduce: venv
	$(PY) -m hiresmed_nb run params/quick.yaml $(if $(REPRODUCE_SLOTS),--slots $(REPRODUCE_SLOTS))

# Jupyter prints the URL (with its token) once the server is up.
lab: venv
	$(VENV)/bin/jupyter lab notebooks --no-browser --ServerApp.ip=127.0.0.1 \
		$(if $(filter 0,$(USER_ID)),--allow-root)

# TensorBoard over a study's logs (every run's curves and results, the grid in HParams), on
# loopback; it prints its URL. TENSORBOARD_PORT empty: 6006 or the next free port.
STUDY ?= quick
TENSORBOARD_PORT ?=
tensorboard: venv
	@test -d outputs/$(STUDY) || { echo "no outputs/$(STUDY): run the study first" \
		"(python -m hiresmed_nb run params/$(STUDY).yaml)" >&2; exit 1; }
	$(VENV)/bin/tensorboard --logdir outputs/$(STUDY) --host 127.0.0.1 \
		$(if $(TENSORBOARD_PORT),--port $(TENSORBOARD_PORT))

# Style, then the package's layers and no import cycle (import-linter, contracts in pyproject.toml).
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
