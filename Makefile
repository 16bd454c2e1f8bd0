# `make demo` and `make test` do all set-up on a fresh machine (a virtual environment in .venv).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml constraints.txt scripts/install.sh
	scripts/install.sh $(VENV) test
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/compress demo --out out/demo

test: $(STAMP)
	$(PY) -m pytest tests

bench: $(STAMP)
	$(PY) bench/budget_hit.py

clean:
	rm -rf $(VENV) out .pytest_cache
