# Geode: one command to test, one to check.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# Debian packages: the demo's database, and what the tests drive (PROGRAM=PACKAGE).
BASE_PACKAGES := python3=python3 py:ensurepip=python3-venv
DEMO_PACKAGES := mariadbd=mariadb-server
TEST_PACKAGES := $(DEMO_PACKAGES) chromium=chromium certutil=libnss3-tools etcd=etcd-server

.PHONY: venv demo quickstart test check lint typecheck format bench clean system-demo system-test

$(STAMP): pyproject.toml
	tools/system-packages $(BASE_PACKAGES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

system-demo:
	tools/system-packages $(DEMO_PACKAGES)

system-test:
	tools/system-packages $(TEST_PACKAGES)

# The confidential bookstore, until Ctrl-C.
demo: $(STAMP) system-demo
	$(BIN)/python -m geode up examples/bookstore $(DEMO_ARGS)

quickstart: $(STAMP)
	$(BIN)/python examples/quickstart/demo.py

test: $(STAMP) system-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples

typecheck: $(STAMP)
	$(BIN)/mypy --strict src

check: lint typecheck test

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks examples
	$(BIN)/ruff check --fix src tests benchmarks examples

bench: $(STAMP)
	$(BIN)/python benchmarks/activation.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
