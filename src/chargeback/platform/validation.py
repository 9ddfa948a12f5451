"""The validation runner every stage uses: Great Expectations suites over warehouse tables.

The ingest gate (:mod:`chargeback.ingest.gate`) validates staged snapshots and the mart
checks (:mod:`chargeback.engine.checks`) validate the marts; both build their GX context
here, the same way: at run time (importing this module does not import GX, so DAG files
stay cheap to parse), ephemeral (datasources and connection strings are never written to
disk; concurrent runs share no config file), with only the validation results and the Data
Docs site on the filesystem. Every run, pass or fail, is kept twice: a row in
``pipeline.validations`` and a page of GX Data Docs under ``settings.gx_dir``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from chargeback.platform import warehouse
from chargeback.platform.settings import Settings, get_settings

log = logging.getLogger(__name__)

EXAMPLES_PER_FAILURE = 3
"""Offending rows quoted per failed expectation in messages (the Data Docs page has up to 20)."""
DATA_DOCS_RESULTS_LIMIT = 50
"""Validation runs listed in (and re-rendered for) the Data Docs index; older pages stay on disk."""

_UNEXPECTED_ROWS = "unexpected_rows_expectation"
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*$")


class ValidationError(RuntimeError):
    """A suite failed. ``results`` holds every suite run of the call, as recorded."""

    def __init__(self, message: str, results: Sequence[SuiteResult]) -> None:
        super().__init__(message)
        self.results = tuple(results)


@dataclass(frozen=True)
class SuiteResult:
    """One suite run against one table, as recorded in ``pipeline.validations``."""

    suite: str
    table_name: str
    load_id: int | None
    window_start: dt.datetime | None
    window_end: dt.datetime | None
    success: bool
    evaluated_expectations: int
    failed_expectations: int
    row_count: int | None
    failures: tuple[str, ...]
    """One line per failed expectation: expectation, offending row count, example rows."""
    validation_id: int
    """Primary key of the ``pipeline.validations`` row."""
    data_docs_url: str | None
    """``file://`` URL of this run's Data Docs page (``None`` if the docs could not be built)."""
    seconds: float = field(default=0.0, compare=False)
    errored_expectations: int = 0
    """Failed expectations that raised instead of being evaluated (included in ``failed_expectations``)."""

    @property
    def summary(self) -> str:
        """What ``pipeline.validations.summary`` holds: the failures, or one line saying it passed."""
        if self.failures:
            return "\n".join(self.failures)
        rows = "no rows" if not self.row_count else f"{self.row_count} row(s)"
        return f"passed: {self.evaluated_expectations} expectation(s) on {rows}"

    def __str__(self) -> str:
        load = f" load {self.load_id}" if self.load_id is not None else ""
        status = self.summary if self.success else f"failed: {self.failed_expectations} expectation(s)"
        return f"{self.table_name}{load}: {status} (validation_id {self.validation_id})"



@dataclass(frozen=True)
class SuiteRun:
    """One suite to run: its JSON spec, the SQL that selects the batch, and its parameters."""

    spec: Mapping[str, Any]
    query: str
    parameters: Mapping[str, Any] = field(default_factory=dict)
    load_id: int | None = None
    window_start: dt.datetime | None = None
    window_end: dt.datetime | None = None


def load_suite(name: str, settings: Settings | None = None) -> dict[str, Any]:
    """The suite ``expectations/<name>.json`` as a dict (GX 1.x ExpectationSuite JSON)."""
    settings = settings or get_settings()
    path = settings.expectations_dir / f"{name}.json"
    try:
        spec = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"expectation suite {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"expectation suite {path} is not valid JSON: {exc}") from exc
    if spec.get("name") != name:
        raise ValueError(f"expectation suite {path} must be named {name!r}, not {spec.get('name')!r}")
    suite_table(spec)
    return spec


def suite_table(spec: Mapping[str, Any]) -> str:
    """The ``schema.table`` a suite validates (its ``meta.table``)."""
    table = (spec.get("meta") or {}).get("table", "")
    if not _IDENTIFIER.match(table):
        raise ValueError(f"suite {spec.get('name')!r}: meta.table must be 'schema.table', not {table!r}")
    return table


def run_suites(runs: Sequence[SuiteRun], run_name: str, settings: Settings | None = None) -> list[SuiteResult]:
    """Run each suite on its batch, build Data Docs, record each run; return the results.

    Does not raise when expectations fail: callers decide (and word) that.
    """
    settings = settings or get_settings()
    started = time.monotonic()
    gx = _import_gx()
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    # The URL reaches GX as a runtime config variable: PostgresDatasource accepts a template where
    # it would reject a Unix-socket URL, and a password is never part of the datasource's config.
    context = gx.get_context(
        mode="ephemeral",
        project_config=_project_config(settings.gx_dir),
        runtime_environment={"chargeback_warehouse_url": warehouse.sqlalchemy_url(settings)},
    )
    datasource = context.data_sources.add_postgres("warehouse", connection_string="${chargeback_warehouse_url}")
    run_id = RunIdentifier(run_name=run_name, run_time=dt.datetime.now(dt.UTC))
    outcomes: list[tuple[SuiteRun, dict[str, Any], Any, list[str | None]]] = []
    try:
        for run in runs:
            run_started = time.monotonic()
            suite = context.suites.add_or_update(gx.ExpectationSuite(**fresh_spec(run.spec)))
            asset = datasource.add_query_asset(name=suite.name, query=run.query)
            definition = context.validation_definitions.add(
                gx.ValidationDefinition(
                    name=suite.name, data=asset.add_batch_definition_whole_table("batch"), suite=suite
                )
            )
            result = definition.run(
                expectation_parameters=dict(run.parameters),
                result_format={
                    "result_format": "COMPLETE",
                    "unexpected_index_column_names": list(_row_key(run.spec)),
                    "partial_unexpected_count": 20,
                    "return_unexpected_index_query": False,
                },
                run_id=run_id,
            )
            key = ValidationResultIdentifier(
                expectation_suite_identifier=ExpectationSuiteIdentifier(name=suite.name),
                run_id=run_id,
                batch_identifier=result.batch_id,
            )
            log.debug("suite %s ran in %.2fs", suite.name, time.monotonic() - run_started)
            order = [e.id for e in suite.expectations]
            outcomes.append((run, _json_safe(result.to_json_dict()), key, order))
    finally:
        _dispose(datasource)

    urls = _build_data_docs(context, [o[2] for o in outcomes], [run.spec["name"] for run in runs])
    results = []
    with warehouse.connect(settings) as conn:
        for (run, result, _key, order), url in zip(outcomes, urls, strict=True):
            results.append(_record(conn, run, result, order, url, time.monotonic() - started))
    for r in results:
        log.info("%s in %.1fs%s", r, r.seconds, "" if r.success else ":\n" + r.summary)
    return results


def _import_gx() -> Any:
    os.environ["GX_ANALYTICS_ENABLED"] = "false"
    import great_expectations as gx

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    return gx


def _project_config(gx_dir: Path) -> Any:
    """Suites, checkpoints and definitions in memory; results, suites and Data Docs on disk."""
    from great_expectations.data_context.types.base import DataContextConfig

    def filesystem(path: str) -> dict[str, Any]:
        return {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(gx_dir / path)}

    def memory() -> dict[str, Any]:
        return {"class_name": "InMemoryStoreBackend"}

    return DataContextConfig(
        config_version=4.0,
        expectations_store_name="expectations_store",
        validation_results_store_name="validation_results_store",
        checkpoint_store_name="checkpoint_store",
        stores={
            # Suites are written so Data Docs can link every suite it shows, not only this run's.
            "expectations_store": {"class_name": "ExpectationsStore", "store_backend": filesystem("expectations")},
            "validation_results_store": {
                "class_name": "ValidationResultsStore",
                "store_backend": filesystem("validations"),
            },
            "checkpoint_store": {"class_name": "CheckpointStore", "store_backend": memory()},
            "validation_definition_store": {"class_name": "ValidationDefinitionStore", "store_backend": memory()},
        },
        data_docs_sites={
            "local_site": {
                "class_name": "SiteBuilder",
                "show_how_to_buttons": False,
                "store_backend": filesystem("data_docs"),
                "site_index_builder": {
                    "class_name": "DefaultSiteIndexBuilder",
                    "validation_results_limit": DATA_DOCS_RESULTS_LIMIT,
                },
            }
        },
        analytics_enabled=False,
        progress_bars={"globally": False, "metric_calculations": False},
    )


def fresh_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the suite spec GX can own (it assigns ids to the suite and expectations)."""
    return json.loads(json.dumps(spec))


def _row_key(spec: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple((spec.get("meta") or {}).get("row_key") or ())


def _dispose(datasource: Any) -> None:
    """Close GX's connection pools now rather than whenever the context is collected."""
    datasource.get_execution_engine().engine.dispose()
    datasource.get_engine().dispose()


def _build_data_docs(context: Any, keys: list[Any], suite_names: list[str]) -> list[str | None]:
    """Render this call's pages and the index; a docs failure is logged, never fatal."""
    from great_expectations.data_context.types.resource_identifiers import ExpectationSuiteIdentifier

    try:
        context.build_data_docs(
            resource_identifiers=[*keys, *(ExpectationSuiteIdentifier(name=n) for n in suite_names)]
        )
        urls = []
        for key in keys:
            sites = context.get_docs_sites_urls(resource_identifier=key, site_name="local_site")
            urls.append(sites[0]["site_url"] if sites else None)
        return urls
    except Exception:  # the validation is recorded in the warehouse regardless
        log.warning("could not build GX Data Docs", exc_info=True)
        return [None] * len(keys)


def _record(
    conn: psycopg.Connection,
    run: SuiteRun,
    result: dict[str, Any],
    order: list[str | None],
    url: str | None,
    seconds: float,
) -> SuiteResult:
    spec = run.spec
    position = {i: n for n, i in enumerate(order)}
    # GX returns results grouped by metric; report them in the suite file's order.
    failed = sorted(
        (r for r in result["results"] if not r["success"]),
        key=lambda r: position.get(r["expectation_config"].get("id"), len(position)),
    )
    failures = tuple(describe_failure(r, _row_key(spec)) for r in failed)
    stats = result["statistics"]
    outcome = SuiteResult(
        suite=spec["name"],
        table_name=suite_table(spec),
        load_id=run.load_id,
        window_start=run.window_start,
        window_end=run.window_end,
        success=bool(result["success"]),
        evaluated_expectations=int(stats["evaluated_expectations"]),
        failed_expectations=int(stats["unsuccessful_expectations"]),
        row_count=_row_count(result),
        failures=failures,
        validation_id=0,
        data_docs_url=url,
        seconds=seconds,
        errored_expectations=sum(1 for r in failed if _exception_message(r.get("exception_info"))),
    )
    return record(conn, outcome, result)


def record(conn: psycopg.Connection, outcome: SuiteResult, result: Mapping[str, Any]) -> SuiteResult:
    """Keep one run in ``pipeline.validations`` (``result``: its full outcome, as JSON); returns
    ``outcome`` with its ``validation_id``. GX suite runs and :func:`chargeback.engine.checks.reconcile_costs`
    are recorded alike."""
    (validation_id,) = conn.execute(
        "insert into pipeline.validations (suite, table_name, load_id, window_start, window_end, success,"
        " evaluated_expectations, failed_expectations, summary, result, data_docs_url)"
        " values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) returning validation_id",
        (
            outcome.suite,
            outcome.table_name,
            outcome.load_id,
            outcome.window_start,
            outcome.window_end,
            outcome.success,
            outcome.evaluated_expectations,
            outcome.failed_expectations,
            outcome.summary,
            Jsonb(result),
            outcome.data_docs_url,
        ),
    ).fetchone()
    return SuiteResult(**{**outcome.__dict__, "validation_id": validation_id})


def _row_count(result: dict[str, Any]) -> int | None:
    counts = [r["result"]["element_count"] for r in result["results"] if "element_count" in (r.get("result") or {})]
    return max(counts) if counts else None


# --- messages ----------------------------------------------------------------------------------


def failure_message(headline: str, results: Iterable[SuiteResult]) -> str:
    """``headline: failure`` for one failure, else the headline and one indented line per failure."""
    results = list(results)
    failures = [f for r in results for f in r.failures]
    tail = [f"Data Docs: {r.data_docs_url}" for r in results if not r.success and r.data_docs_url]
    tail += ["pipeline.validations: validation_id " + ", ".join(str(r.validation_id) for r in results if not r.success)]
    if len(failures) == 1:
        return f"{headline}: {failures[0]}\n" + "\n".join(tail)
    return f"{headline}:\n" + "\n".join(f"  {f}" for f in failures) + "\n" + "\n".join(tail)


def describe_failure(result: Mapping[str, Any], row_key: Sequence[str] = ()) -> str:
    """One line for one failed expectation result, e.g.

    ``expect_column_values_to_be_between(value >= 0): 1 row(s), e.g. part-0.jsonl:7 value=-3.5``
    """
    config = result.get("expectation_config") or {}
    head = f"{config.get('type')}({_describe_config(config)})"
    error = _exception_message(result.get("exception_info"))
    if error:
        return f"{head}: could not be evaluated: {error}"
    res = result.get("result") or {}
    if config.get("type") == _UNEXPECTED_ROWS:
        rows = (res.get("details") or {}).get("unexpected_rows") or []
        return _rows_line(head, res.get("observed_value"), rows, row_key)
    if "unexpected_count" in res:
        rows = res.get("partial_unexpected_index_list") or []
        if not rows:
            column = (config.get("kwargs") or {}).get("column", "value")
            rows = [{column: v} for v in res.get("partial_unexpected_list") or []]
        rows = sorted(_dedupe(rows), key=lambda r: _sort_key(r, row_key))
        return _rows_line(head, res.get("unexpected_count"), rows, row_key)
    mismatched = (res.get("details") or {}).get("mismatched")
    if isinstance(mismatched, dict):
        parts = [f"{k} column(s) {', '.join(map(str, v))}" for k, v in mismatched.items() if v]
        return f"{head}: " + "; ".join(parts)
    return f"{head}: observed {_format_value(res.get('observed_value'))}"


def _describe_config(config: Mapping[str, Any]) -> str:
    if config.get("description"):
        return str(config["description"])
    kwargs = config.get("kwargs") or {}
    return ", ".join(str(kwargs[k]) for k in ("column", "column_A", "column_B") if k in kwargs) or "table"


def _exception_message(info: Any) -> str | None:
    if not isinstance(info, dict):
        return None
    infos = [info] if "raised_exception" in info else [v for v in info.values() if isinstance(v, dict)]
    for i in infos:
        if i.get("raised_exception"):
            message = str(i.get("exception_message") or "error").strip()
            return " ".join(message.split())[:300]
    return None


def _rows_line(head: str, count: Any, rows: Sequence[Mapping[str, Any]], row_key: Sequence[str]) -> str:
    line = f"{head}: {count} row(s)"
    examples = [_format_row(r, row_key) for r in rows[:EXAMPLES_PER_FAILURE]]
    if examples:
        line += ", e.g. " + "; ".join(examples)
    return line


def _dedupe(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    seen: set[str] = set()
    out = []
    for row in rows:
        k = json.dumps(row, sort_keys=True, default=str)
        if k not in seen:
            seen.add(k)
            out.append(row)
    return out


def _sort_key(row: Mapping[str, Any], row_key: Sequence[str]) -> tuple:
    """GX samples offending rows in no order; quote them by key (file, then line number)."""
    return tuple((0, v, "") if isinstance(v, int | float) else (1, 0, str(v)) for v in (row.get(k) for k in row_key))


def _format_row(row: Mapping[str, Any], row_key: Sequence[str]) -> str:
    """``file:line field=value`` for staged rows, ``key=value ... field=value`` otherwise."""
    keys = [k for k in row_key if k in row]
    if keys == ["source_file", "source_line"]:
        where = f"{row['source_file']}:{row['source_line']}"
    else:
        where = " ".join(f"{k}={_format_value(row[k])}" for k in keys)
    rest = " ".join(f"{k}={_format_value(v)}" for k, v in row.items() if k not in keys)
    return " ".join(p for p in (where, rest) if p)


_ISO_UTC = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2})(:00(\.0+)?)?(\+00:00|Z)$")


def _format_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, dt.datetime):
        value = value.isoformat()
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    if isinstance(value, str):
        m = _ISO_UTC.match(value)
        if m:
            return f"{m.group(1)}Z"
        return repr(value) if (value == "" or value != value.strip() or " " in value) else value
    return str(value)


def _json_safe(value: Any) -> Any:
    """GX results may hold NaN/Infinity floats, which JSON (and jsonb) cannot."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return value
