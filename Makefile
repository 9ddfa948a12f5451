# Chargeback — the two commands a new user needs are `make demo` and `make test`.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | md5sum | cut -c1-8)
export XDG_RUNTIME_DIR ?= /tmp
export GX_ANALYTICS_ENABLED := false
export AIRFLOW_HOME ?= $(CURDIR)/airflow_home
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
# astronomer-cosmos renders usage_hourly's dbt tasks: no telemetry, no project hashing
export AIRFLOW__COSMOS__ENABLE_TELEMETRY := False
export AIRFLOW__COSMOS__ENABLE_DAG_VERSIONING := False
export DO_NOT_TRACK := 1

.PHONY: install system-deps demo test test-external-pg bench airflow lint dbt-docs warehouse-stop clean focus-validator

$(STAMP): pyproject.toml
	@test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip uv
	$(VENV)/bin/uv pip install --python $(PY) -q -e '.[test]'
	@rm -f $(VENV)/.installed-* && touch $@

install: system-deps $(STAMP) ## create the virtualenv and install Chargeback with its test tools
	@# dbt parse -> dbt_project/target/manifest.json, which the usage_hourly DAG is rendered from
	@$(PY) -c 'from chargeback import transform; transform.parse()' >/dev/null || \
	  { echo "dbt parse failed: see dbt_project/logs/dbt.log"; exit 1; }

system-deps: ## Debian libraries WeasyPrint needs (installed when missing and we are root)
	@if ! ldconfig -p | grep -q 'libpango-1.0.so.0' || ! ldconfig -p | grep -q 'libharfbuzz-subset.so.0'; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 >/dev/null; \
	  else echo "install libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 (Debian) for PDF rendering"; exit 1; fi; \
	fi

demo: install ## simulate a month for 50 tenants and run both DAGs through Airflow
	$(VENV)/bin/chargeback demo

test: install focus-validator ## the whole suite on the embedded warehouse
	$(VENV)/bin/pytest

test-external-pg: install ## the warehouse integration tests again, on the server $$WAREHOUSE_DSN names
	@test -n "$$WAREHOUSE_DSN" || { echo "set WAREHOUSE_DSN, e.g. postgresql://postgres@127.0.0.1:5432/postgres"; exit 2; }
	$(VENV)/bin/pytest -m warehouse

bench: install ## performance figures as JSON lines
	$(PY) -m chargeback.bench

airflow: install ## Airflow standalone (web UI on :8080) against the same warehouse
	$(PY) -m chargeback.orchestrate standalone

# The FinOps Foundation's FOCUS validator needs Python >= 3.12, so it gets its own venv
# (tests/test_focus.py and `chargeback export focus --validate` run it from there).
# pyarrow < 22: focus-validator pins numpy < 2, which newer pyarrow wheels refuse.
FOCUS_VENV := .venv-focus
FOCUS_VALIDATOR := focus-validator==2.2.1
focus-validator: $(STAMP) ## the FOCUS 1.2 validator in $(FOCUS_VENV) (Python 3.12: PATH or pyenv)
	@test -x $(FOCUS_VENV)/bin/focus-validator && exit 0; \
	py=; for c in "$$(command -v python3.12)" /root/.pyenv/versions/3.12*/bin/python3.12; do \
	  if [ -x "$$c" ] && "$$c" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; then py=$$c; break; fi; \
	done; \
	test -n "$$py" || { echo "focus-validator needs Python 3.12: put python3.12 on PATH (or pyenv install 3.12)"; exit 1; }; \
	$(VENV)/bin/uv venv -q --python "$$py" $(FOCUS_VENV) && \
	$(VENV)/bin/uv pip install -q --python $(FOCUS_VENV)/bin/python '$(FOCUS_VALIDATOR)' 'pyarrow<22'

lint: install
	$(VENV)/bin/ruff check src tests dags

warehouse-stop: ## stop the embedded PostgreSQL
	$(VENV)/bin/chargeback warehouse stop

clean: warehouse-stop
	rm -rf .warehouse airflow_home landing reports/out dbt_project/target dbt_project/logs
