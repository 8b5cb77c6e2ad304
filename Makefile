# The two commands that set up everything on a fresh Linux machine:
#   make run    creates .venv with the runtime and runs the daemon in simulation
#   make test   creates .venv with the runtime, training and test extras and runs the tests
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run test bench peer clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.run-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[demo]"
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[demo,dev,train]"
	touch $@ $(VENV)/.run-installed

run: $(VENV)/.run-installed
	$(BIN)/relaxd run $(ARGS)

test: $(VENV)/.test-installed
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.test-installed
	$(BIN)/python benchmarks/bench_replay.py
	$(BIN)/python benchmarks/bench_estop.py
	$(BIN)/python benchmarks/bench_negative_onset.py

# The peer the vision benchmark compares with: the fer package's own pipeline (Haar + its
# TFLite model), in its own virtualenv beside relaxd's runtime. Then:
#   .venv-peer/bin/python benchmarks/bench_replay.py
PEER ?= .venv-peer
peer: $(PEER)/.installed
$(PEER)/.installed:
	$(PYTHON) -m venv $(PEER)
	$(PEER)/bin/pip install --quiet --upgrade pip
	$(PEER)/bin/pip install --quiet "opencv-python-headless<5" ai-edge-litert numpy tensorflow-cpu pandas \
		requests pillow tqdm "setuptools<81"
	$(PEER)/bin/pip install --quiet --no-deps fer==25.10.3
	$(PEER)/bin/pip install --quiet -e ".[demo]"
	touch $@

clean:
	rm -rf $(VENV) $(PEER) build *.egg-info
