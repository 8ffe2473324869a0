# Two commands for a fresh machine: `make demo` and `make test`.
# Every pip call goes through constraints.txt so torch stays the local CPU build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.installed

.PHONY: venv demo test bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml constraints.txt edgequant/observers/_binning.c
	$(PIP) install -c constraints.txt torch==2.13.0
	$(PIP) install -c constraints.txt -e ".[all]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/edgequant demo

test: $(STAMP)
	@test -x /usr/bin/chromium || DEBIAN_FRONTEND=noninteractive apt-get install -y chromium \
		|| (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -n 2 tests

# The bench's peers (AIMET-torch, torchao): benchmark tools only, never installed by `venv`/`test`.
# Every pip call keeps constraints.txt, and the venv's numpy/onnx/onnxruntime are pinned to what
# is installed. aimet-torch goes in without its torchvision requirement, and torchvision (PyPI's
# CUDA build, which fails to import on the CPU torch) into a folder of its own that only
# benchmarks/peers.py puts on sys.path (see benchmarks/requirements-peers.txt).
PEERS_STAMP := $(VENV)/.peers-installed
PEERS_PINS := $(VENV)/.peers-pins.txt
AIMET_PIN := aimet-torch==2.42.0
TORCHVISION_PIN := torchvision==0.28.0

$(PEERS_STAMP): $(STAMP) benchmarks/requirements-peers.txt constraints.txt
	$(PY) -m pip freeze | grep -iE '^(numpy|onnx|onnxruntime)==' > $(PEERS_PINS)
	$(PIP) install -c constraints.txt -c $(PEERS_PINS) -r benchmarks/requirements-peers.txt
	$(PIP) install -c constraints.txt -c $(PEERS_PINS) --no-deps $(AIMET_PIN)
	$(PIP) install -c constraints.txt --no-deps --upgrade --target $(VENV)/peers-torchvision $(TORCHVISION_PIN)
	touch $(PEERS_STAMP)

bench: $(STAMP) $(PEERS_STAMP)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info
