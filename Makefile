# hiresmed-nb: `make reproduce` runs the quick study; `make test` runs the tests.
# Both create .venv on first use (Python 3.11); the stamp file makes later calls install nothing.

PYTHON ?= python3.11
VENV := .venv
PY ?= $(VENV)/bin/python
STAMP := $(VENV)/.installed
export TF_CPP_MIN_LOG_LEVEL ?= 2
HOROVOD_BUILD := HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_PYTORCH=1 \
	HOROVOD_WITHOUT_MXNET=1 HOROVOD_WITHOUT_MPI=1 CMAKE_POLICY_VERSION_MINIMUM=3.5

.PHONY: venv horovod test test-fast reproduce lab lint format clean-outputs

venv: $(STAMP)

$(STAMP): requirements.txt requirements-horovod.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(MAKE) horovod
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name hiresmed --display-name "Python 3 (hiresmed)"
	touch $@

# Horovod compiles against the TensorFlow already installed (about 3 minutes on 2 cores).
horovod:
	PATH="$(dir $(abspath $(PY))):$$PATH" $(HOROVOD_BUILD) \
		$(PY) -m pip install --quiet --no-build-isolation --no-cache-dir -r requirements-horovod.txt
	PATH="$(dir $(abspath $(PY))):$$PATH" horovodrun --check-build | grep -q '\[X\] Gloo'

test: venv
	$(PY) -m pytest

test-fast: venv
	$(PY) -m pytest -m "not notebook and not distributed"

reproduce: venv
	$(PY) -m hiresmed_nb run params/quick.yaml

lab: venv
	$(VENV)/bin/jupyter lab notebooks

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
