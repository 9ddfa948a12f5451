# Chargeback — the two commands a new user needs are `make demo` and `make test`.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml uv.lock | md5sum | cut -c1-8)
export XDG_RUNTIME_DIR ?= /tmp
export GX_ANALYTICS_ENABLED := false
export AIRFLOW_HOME ?= $(CURDIR)/airflow_home
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
# dbt and Airflow: no usage tracking (it would call out to the internet)
export DO_NOT_TRACK := 1

.PHONY: install system-deps browser-deps demo dashboard test test-unit test-external-pg bench airflow airflow-celery lint lock warehouse-stop clean focus-validator

# Every install is the same: .venv is synced exactly to uv.lock (`make lock` upgrades it).
$(STAMP): pyproject.toml uv.lock
	@test -x $(VENV)/bin/uv || { { python3.11 -m venv $(VENV) || python3 -m venv $(VENV); } && $(PY) -m pip install -q uv; }
	$(VENV)/bin/uv sync -q --locked --extra test
	@rm -f $(VENV)/.installed-* && touch $@

install: system-deps $(STAMP) ## create the virtualenv and install Chargeback with its test tools
	@# dbt parse: the project checked without a warehouse (dbt_project/target/manifest.json)
	@$(PY) -c 'from chargeback.engine import transform; transform.parse()' >/dev/null || \
	  { echo "dbt parse failed: see dbt_project/logs/dbt.log"; exit 1; }

system-deps: ## Debian libraries WeasyPrint needs (installed when missing and we are root)
	@if ! ldconfig -p | grep -q 'libpango-1.0.so.0' || ! ldconfig -p | grep -q 'libharfbuzz-subset.so.0'; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 >/dev/null; \
	  else echo "install libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 (Debian) for PDF rendering"; exit 1; fi; \
	fi

browser-deps: ## Debian's chromium for the dashboard's browser tests and P6 (installed when missing and we are root)
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "install chromium (Debian) for the dashboard's browser tests"; exit 1; fi; \
	fi

demo: install ## simulate a month for 50 tenants and run both DAGs through Airflow
	CHARGEBACK_ENV=demo $(VENV)/bin/chargeback demo

PORT ?= 8501
dashboard: install ## the dashboard on http://localhost:$(PORT) (docs/DASHBOARD.md); users: chargeback users add
	$(VENV)/bin/chargeback dashboard --port $(PORT)

# pytest-xdist workers; each gets a warehouse database and dbt artifacts of its own (three on
# these 2 cores were slower: make test 9 min 50 s against 9 min 3 s)
TEST_WORKERS ?= 2

test: install focus-validator browser-deps ## the whole suite: pure logic, warehouse, Airflow runs, FOCUS validator
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadfile --durations=15

test-unit: install ## pure-logic tests only, in seconds: no PostgreSQL is started or reached
	$(VENV)/bin/pytest -p no:xdist -m "not warehouse and not airflow and not focus_validator"

# On another server, the tests of what depends on its version (docs/DEVELOPMENT.md, "CI"): the
# loader's safe casts (an exception-catching function before PostgreSQL 16), the schema, roles and
# row-level security (the readers' too: tests/test_access.py), and the money path from usage to invoice
# lines (the dbt models with their unit tests). Everything else runs the same SQL on every server;
# `make test-external-pg EXTERNAL_PG_TESTS=tests` runs all the warehouse tests.
EXTERNAL_PG_TESTS ?= tests/test_load.py tests/test_gate.py tests/test_quarantine.py tests/test_hostile_producers.py \
	tests/test_attribution_contract.py tests/test_warehouse.py tests/test_roles.py tests/test_worked_example.py \
	tests/test_allocation.py tests/test_pricing.py tests/test_access.py
test-external-pg: install ## the server-dependent warehouse tests again, on the server $$WAREHOUSE_DSN names
	@test -n "$$WAREHOUSE_DSN" || { echo "set WAREHOUSE_DSN, e.g. postgresql://postgres@127.0.0.1:5432/postgres"; exit 2; }
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadfile -m "warehouse and not airflow" $(EXTERNAL_PG_TESTS)

bench: install browser-deps ## performance figures as JSON lines
	CHARGEBACK_ENV=dev $(PY) -m chargeback.bench

airflow: install ## Airflow standalone (web UI on :8080) against the same warehouse
	$(PY) -m chargeback.orchestration.runner standalone

WORKERS ?= 2
airflow-celery: install ## Airflow on Celery: scheduler, API server (UI on :8080), DAG processor, triggerer, $(WORKERS) workers on Redis
	$(PY) -m chargeback.orchestration.cluster $(WORKERS)

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

# sqlfluff's dbt templater compiles the project against the warehouse (the embedded one
# unless WAREHOUSE_DSN is set), with artifacts of its own beside dbt's.
lint: install ## ruff, import-linter's layer contracts, sqlfluff over the dbt project
	$(VENV)/bin/ruff check src tests dags
	$(VENV)/bin/lint-imports
	@eval "$$($(VENV)/bin/chargeback warehouse env)" && \
	  DBT_TARGET_PATH=dbt_project/target/sqlfluff DBT_LOG_PATH=dbt_project/logs $(VENV)/bin/sqlfluff lint dbt_project

lock: ## upgrade every dependency to its newest allowed version in uv.lock (then run make test)
	@test -x $(VENV)/bin/uv || $(MAKE) install
	$(VENV)/bin/uv lock --upgrade

warehouse-stop: ## stop the embedded PostgreSQL
	$(VENV)/bin/chargeback warehouse stop

clean: warehouse-stop
	rm -rf .warehouse airflow_home landing reports/out dbt_project/target dbt_project/logs
