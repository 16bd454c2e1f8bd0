# `make demo` and `make test` do all set-up on a fresh machine (a virtual environment in .venv).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo lint test bench zoo zoo-test clean

$(STAMP): pyproject.toml constraints.txt scripts/install.sh
	scripts/install.sh $(VENV) test,cpu-runtimes
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/compress demo --out out/demo

# Style and types (pyproject.toml: [tool.ruff], [tool.mypy]); `ruff format .` and `ruff check --fix .` repair most.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy edgeprune

test: lint
	$(PY) -m pytest tests

# CIFAR10 points at the full CIFAR-10 archive (x_train, y_train, x_test, y_test), see bench/README.md
CIFAR10 ?= ../shared/data/cifar10/cifar10.npz

bench: $(STAMP)
	$(PY) bench/budget_hit.py
	$(PY) bench/noise_floor.py
	$(PY) bench/runtimes.py
	$(PY) bench/cifar10_recovery.py --data $(CIFAR10)
	$(PY) bench/cifar10_methods.py --data $(CIFAR10) --epochs 1
	$(PY) bench/cifar10_learned.py --data $(CIFAR10)
	$(PY) bench/cifar10_anp.py --data $(CIFAR10)
	$(PY) bench/search.py --data $(CIFAR10)
	$(PY) bench/transformer_flop.py

# The models users bring (timm, torchvision, transformers, ultralytics) live in a separate environment
# made by the shared script, never in the project's dependencies: bench/zoo.py says what it runs.
ZOO_VENV ?= .venv-zoo
ZOO_SCRIPT ?= ../shared/zoo/make-zoo-venv.sh

$(ZOO_VENV)/.installed: pyproject.toml constraints.txt
	bash $(ZOO_SCRIPT) $(ZOO_VENV) .
	$(ZOO_VENV)/bin/python -m pip install -q -c constraints.txt "pytest>=8"
	touch $@

zoo: $(ZOO_VENV)/.installed
	$(ZOO_VENV)/bin/python bench/zoo.py

# The ecosystem doors (ultralytics checkpoints, Hugging Face folders, timm/torchvision names) in and
# out, on small configs with random weights: .ci/run runs these after `make test`.
zoo-test: $(ZOO_VENV)/.installed
	$(ZOO_VENV)/bin/python -m pytest tests_zoo

clean:
	rm -rf $(VENV) $(ZOO_VENV) out .pytest_cache .ruff_cache .mypy_cache
