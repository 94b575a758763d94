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

.PHONY: install test test-fast demo bench readme-reference clean help

help:
	@echo "make demo    build a tiny model and run ft end to end on examples/ (CPU, offline)"
	@echo "make test    run the whole test suite"
	@echo "make bench   run the benchmarks in bench/ and update bench/RESULTS.md"
	@echo "make clean   remove .venv and demo outputs"

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# -n auto: one worker per core; each test is mostly single-threaded library imports in a subprocess.
test: $(STAMP)
	$(PY) -m pytest -n auto --dist loadgroup

# Everything except the tests marked slow (multi-process, kill-and-resume).
test-fast: $(STAMP)
	$(PY) -m pytest -n auto --dist loadgroup -m "not slow"

demo: $(STAMP)
	FT=$(FT) bash examples/demo.sh

bench: $(STAMP)
	$(PY) bench/run_all.py

# Regenerate the config reference table in README.md from the schema.
readme-reference: $(STAMP)
	$(PY) -c "import re, pathlib; from ft_cli.config import reference_table as t; p = pathlib.Path('README.md'); \
	p.write_text(re.sub(r'(<!-- config-reference:start -->\n).*?(\n<!-- config-reference:end -->)', lambda m: m[1] + t() + m[2], p.read_text(), flags=re.S))"

clean:
	rm -rf $(VENV) out/demo .pytest_cache
