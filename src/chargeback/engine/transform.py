"""Transform stage: run the dbt project (``dbt_project.yml`` + ``dbt_project/``).

dbt runs in-process through ``dbtRunner`` so a DAG task, the CLI and the tests all
get the same result objects and the same error messages, without a subprocess.
A window ``[window_start, window_end)`` makes the hourly models replace exactly
those hours and the monthly models the months the window touches; without one,
every model rebuilds everything.

Every build, succeeded or failed, is kept in ``pipeline.transform_runs`` with its
window and failure lines: ``chargeback.platform.freshness`` refuses to invoice a month whose
marts were not rebuilt after its last load, or whose last build failed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from chargeback.platform import freshness, warehouse
from chargeback.platform.periods import parse_instant
from chargeback.platform.settings import Settings, get_settings

# dbt keeps global state (flags, adapters, event manager): one invocation at a time
# per process. Separate processes (Airflow tasks) don't share it.
_dbt_lock = threading.Lock()
log = logging.getLogger(__name__)

INSIGHTS = freshness.INSIGHT_MARTS
"""The insight marts (daily usage and ledger, showback below the tenant, trends) and their
tests: rebuilt by the insights DAG and at month close, not by the hourly cost chain
(docs/INSIGHTS.md, "When the insight marts are built"). Nothing billing computes reads them."""

GUARANTEED = "tag:guaranteed"
"""Data tests that re-prove what a key or the model's construction already guarantees (the
primary key of raw usage, a ``group by`` on the tested columns, the allocation's keyed joins):
they prove the code, like unit tests, so CI runs them (``unit_tests=True``) and production builds
leave them out. Each says in its ``meta.guaranteed_by`` what guarantees it."""

_FAILED = {"error", "fail", "runtime error"}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# dbt's own header line ("Database Error in model x (path)") says nothing new.
_HEADER = re.compile(r"^\w[\w ]* (Error|error) in \w+ \S+ \(.*\)$")
_KINDS = {"Database Error", "Compilation Error", "Runtime Error"}


class TransformError(RuntimeError):
    """dbt failed; the message has one line per failed model or test and why."""

    def __init__(self, message: str, failures: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.failures = failures


@dataclass(frozen=True)
class NodeResult:
    """Outcome of one model, data test or unit test of the run."""

    resource_type: str
    name: str
    status: str
    message: str
    seconds: float


@dataclass(frozen=True)
class TransformResult:
    """What a successful ``build`` did, for the task log and the tests."""

    window_start: datetime | None
    window_end: datetime | None
    seconds: float
    nodes: tuple[NodeResult, ...]

    def count(self, resource_type: str) -> int:
        """How many nodes of a type ran, e.g. ``count("unit_test")``."""
        return sum(1 for n in self.nodes if n.resource_type == resource_type)


def build(
    window_start: datetime | None = None,
    window_end: datetime | None = None,
    *,
    select: str | None = None,
    exclude: str | None = None,
    full_refresh: bool = False,
    unit_tests: bool = False,
) -> TransformResult:
    """``dbt build`` (models and data tests; with ``unit_tests`` also dbt's unit tests and the
    :data:`GUARANTEED` tests) over a window, or over everything.

    Unit tests prove the SQL logic on fixed inputs, so they can only fail when the code
    changed: CI runs them (``unit_tests=True``), a production build leaves them out, as
    dbt recommends (they were two thirds of an hourly build's time). So do the tests of what
    a key or the construction guarantees (a fifth of a full month's build). Naive datetimes
    are taken as UTC. Raises :class:`TransformError` when any model or test fails; dbt
    skips whatever depends on a failure, so a failed run never publishes marts built
    on bad data.
    """
    window = _window(window_start, window_end)
    if window and full_refresh:
        # a full refresh recreates the incremental tables: with a window they would
        # keep only the window's rows
        raise ValueError("full_refresh rebuilds everything; call it without a window")
    settings = get_settings()
    warehouse.ensure_schema(settings)
    # this function records the run itself (below), so dbt's on-run-end hook does not
    variables: dict[str, object] = {"chargeback_record_run": False}
    if window:
        variables.update(window_start=window[0].isoformat(), window_end=window[1].isoformat())
    args = ["build", "--vars", json.dumps(variables)]
    excluded = [exclude] if exclude else []
    if not unit_tests:
        args += ["--exclude-resource-type", "unit_test"]
        excluded.append(GUARANTEED)
    if select:
        args += ["--select", select]
    if excluded:
        args += ["--exclude", " ".join(excluded)]
    selection = _selection(select, exclude)
    if full_refresh:
        args.append("--full-refresh")
    started = time.monotonic()
    with _one_build_at_a_time(settings) as began:
        try:
            outcome = _invoke(args, settings)
        except Exception as exc:
            _record_run(settings, window, selection, began, (f"dbt build could not run: {_one_line(str(exc))}",))
            raise
        results = outcome.result.results if outcome.result else ()
        nodes = tuple(_node_result(r) for r in results)
        failed = [n for n in nodes if n.status in _FAILED]
        if outcome.exception is not None or not outcome.success or failed:
            failed = [_with_snapshot(n, r, settings) for n, r in zip(nodes, results, strict=True)
                      if n.status in _FAILED]
            error = _error("dbt build", outcome, nodes, failed)
            _record_run(settings, window, selection, began, error.failures)
            raise error
        _record_run(settings, window, selection, began, ())
    return TransformResult(
        window_start=window[0] if window else None,
        window_end=window[1] if window else None,
        seconds=round(time.monotonic() - started, 3),
        nodes=nodes,
    )


def _selection(select: str | None, exclude: str | None) -> str | None:
    """How ``pipeline.transform_runs.selection`` records a build's nodes (``None``: all of them)."""
    if not exclude:
        return select
    return f"{select} --exclude {exclude}" if select else f"--exclude {exclude}"


def parse(environ: Mapping[str, str] | None = None) -> Path:
    """Write ``manifest.json`` (``dbt parse``): the project checked without a warehouse
    (``make install``), and a partial parse the builds that follow start from; returns its path.

    Parsing never connects: the ``CHARGEBACK_PG_*`` values come from ``environ`` (default
    ``os.environ``) and, where missing (``make install``, a fresh checkout), placeholders,
    so no warehouse is started just to parse. Real values keep dbt's partial parse valid
    for the builds that follow.
    """
    settings = get_settings()
    environ = os.environ if environ is None else environ
    env = {key: environ.get(key) or value for key, value in _PARSE_PLACEHOLDERS.items()}
    outcome = _invoke(["parse", "--quiet"], settings, env=env)
    if outcome.exception is not None or not outcome.success:
        raise _error("dbt parse", outcome, (), [])
    return manifest_path(settings)


# profiles.yml needs values, not a server, to parse
_PARSE_PLACEHOLDERS = {
    "CHARGEBACK_PG_HOST": "localhost",
    "CHARGEBACK_PG_PORT": "5432",
    "CHARGEBACK_PG_USER": "postgres",
    "CHARGEBACK_PG_PASSWORD": "",
    "CHARGEBACK_PG_DBNAME": "chargeback",
}


def manifest_path(settings: Settings | None = None) -> Path:
    """Where :func:`parse` (and every build) writes the dbt manifest."""
    return _target_path(settings or get_settings()) / "manifest.json"


def _window(start: datetime | None, end: datetime | None) -> tuple[datetime, datetime] | None:
    if start is None and end is None:
        return None
    if start is None or end is None:
        raise ValueError("pass both window_start and window_end, or neither")
    start, end = parse_instant(start), parse_instant(end)
    if start >= end:
        raise ValueError(f"window_start {start.isoformat()} must be before window_end {end.isoformat()}")
    return start, end


def _target_path(settings: Settings) -> Path:
    return settings.dbt_artifacts_dir / "target"


def _invoke(args: list[str], settings: Settings, env: Mapping[str, str] | None = None):  # -> dbtRunnerResult
    from dbt.cli.main import dbtRunner  # heavy import: only when a transform runs

    common = [
        "--project-dir",
        str(settings.dbt_project_dir),
        "--profiles-dir",
        str(settings.dbt_profiles_dir),
        "--target-path",
        str(_target_path(settings)),
        "--log-path",
        str(settings.dbt_artifacts_dir / "logs"),
        "--no-use-colors",
    ]
    with _dbt_lock, _environ(warehouse.dbt_env(settings) if env is None else env):
        return dbtRunner().invoke([args[0], *common, *args[1:]])


@contextlib.contextmanager
def _one_build_at_a_time(settings: Settings) -> Iterator[datetime]:
    """Every build recreates the staging views and the dimension tables, so two
    builds against one database (e.g. two Airflow windows) must not overlap: a
    session advisory lock makes the second wait for the first.

    Yields the warehouse's clock once the lock is held: when the build began reading
    raw usage, on the same clock as ``pipeline.load_runs.finished_at``.
    """
    with warehouse.connect(settings, autocommit=True) as conn:
        conn.execute("select pg_advisory_lock(hashtext('chargeback.transform'))")
        try:
            yield conn.execute("select clock_timestamp()").fetchone()[0]
        finally:
            with contextlib.suppress(Exception):  # a lost connection released the lock already
                conn.execute("select pg_advisory_unlock(hashtext('chargeback.transform'))")


def _record_run(settings: Settings, window: tuple[datetime, datetime] | None, select: str | None,
                started_at: datetime, failures: tuple[str, ...]) -> None:
    """Keep this build in ``pipeline.transform_runs`` (``chargeback.platform.freshness`` reads it).

    Never raises: when the warehouse itself failed the build, the build's own error
    is what the caller must see; a month without a record of a successful build after
    its last load is refused anyway.
    """
    try:
        with warehouse.connect(settings, autocommit=True) as conn:
            conn.execute(
                "insert into pipeline.transform_runs (window_start, window_end, selection, status, started_at,"
                " failures, invoked_by) values (%s, %s, %s, %s, %s, %s, 'chargeback')",
                (window[0] if window else None, window[1] if window else None, select,
                 "failed" if failures else "succeeded", started_at, list(failures)),
            )
    except Exception as exc:  # noqa: BLE001 - see the docstring
        log.warning("could not record the dbt build in pipeline.transform_runs: %s", " ".join(str(exc).split()))


@contextlib.contextmanager
def _environ(values: Mapping[str, str]) -> Iterator[None]:
    """profiles.yml reads the connection with env_var(): set it for this run only."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def _node_result(result) -> NodeResult:
    node = result.node
    return NodeResult(
        resource_type=str(getattr(node.resource_type, "value", node.resource_type)),
        name=node.name,
        status=str(getattr(result.status, "value", result.status)),
        message=_one_line(result.message or ""),
        seconds=round(result.execution_time or 0.0, 3),
    )


def _one_line(message: str) -> str:
    """The informative part of a dbt message on one line (no colours, no header, no diff)."""
    lines = [line.strip() for line in _ANSI.sub("", message).splitlines()]
    lines = [line for line in lines if line and not _HEADER.match(line) and line not in _KINDS]
    if not lines:
        return ""
    first = lines[0]
    if first.startswith("An error occurred during execution of unit test") and len(lines) > 1:
        lines = lines[1:]  # dbt's generic preamble; the database's reason follows
        first = "could not run: " + lines[0]
    if first.startswith("actual differs from expected"):
        return "actual differs from expected (see the diff in the dbt log)"
    failing = re.fullmatch(r"Got (\d+) results?, configured to (fail|warn) if .*", first)
    if failing:
        count = int(failing.group(1))
        return f"{count} failing row{'' if count == 1 else 's'}"
    detail = next((line for line in lines[1:] if line.startswith("DETAIL:")), "")
    return " ".join(f"{first} {detail}".split())


_NOT_NULL = re.compile(r'null value in column "(\w+)"')
_GRAIN = ("tenant_id", "meter", "hour_start")
_MONTHS = ("invoice_month", "cost_month", "usage_month")


def _with_snapshot(node: NodeResult, result, settings: Settings) -> NodeResult:
    """``node`` with its message ending in the snapshot behind its first failing row:
    ``… — snapshot at landing/…/x.jsonl:12 (and 3 more)`` (``raw.usage_snapshots``'s
    source_file and source_line), when the rows name a tenant, meter, hour or month."""
    try:
        with warehouse.connect(settings) as conn:
            where = _snapshot_behind(conn, _failing_rows(conn, result.node, result.message or ""))
    except Exception as exc:  # noqa: BLE001 - the build's own failure is what matters; this adds to it
        log.warning("could not find the snapshots behind %s: %s", node.name, " ".join(str(exc).split()))
        where = None
    return node if where is None else dataclasses.replace(node, message=f"{node.message or node.status} — {where}")


def _failing_rows(conn, node, message: str) -> list[dict]:
    """The rows a failed test selects (for a generic test on a column: the tested model's rows
    with the failing values), or the rows a model could not write for a null in a not-null column."""
    code = getattr(node, "compiled_code", None)
    if not code:
        return []
    resource = str(getattr(node.resource_type, "value", node.resource_type))
    if resource == "model":
        column = _NOT_NULL.search(message)
        if column is None:
            return []
        return _rows(conn, f'select * from ({code}) as failed where "{column.group(1)}" is null limit 20')
    if resource != "test":
        return []
    rows = _rows(conn, f"select * from ({code}) as failing limit 20")
    metadata = getattr(node, "test_metadata", None)
    column = (metadata.kwargs or {}).get("column_name") if metadata else None
    attached = getattr(node, "attached_node", None)  # "model.chargeback.int_usage_hourly"
    if not rows or not column or not attached or not re.fullmatch(r"\w+", column):
        return rows
    model = attached.rsplit(".", 1)[-1]
    found = conn.execute("select table_schema from information_schema.tables where table_name = %s"
                         " order by table_schema limit 1", (model,)).fetchone()
    if found is None:
        return rows
    values = [next(iter(row.values())) for row in rows]
    relation = f'"{found[0]}"."{model}"'
    nulls = f' or "{column}" is null' if None in values else ""
    return _rows(conn, f'select * from {relation} where "{column}"::text = any(%s){nulls} limit 20',
                 ([str(v) for v in values if v is not None],)) or rows


def _rows(conn, statement: str, params: tuple | None = None) -> list[dict]:
    """Rows of ``statement`` as dicts; compiled dbt SQL may hold a literal ``%``, so without
    ``params`` it is sent as it is (no placeholders)."""
    cur = conn.execute(statement, params)
    names = [c.name for c in cur.description or ()]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def _snapshot_behind(conn, rows: list[dict]) -> str | None:
    """``snapshot at file:line (and N more)``: the first snapshot of the rows' tenants, meters and hours."""
    conditions, params = [], []
    for row in rows:
        terms = [f"{c} = %s" for c in _GRAIN if row.get(c) is not None]
        params += [row[c] for c in _GRAIN if row.get(c) is not None]
        month = next((row[c] for c in _MONTHS if row.get(c) is not None), None)
        if "hour_start" not in row and month is not None:
            terms.append("hour_start >= %s::date and hour_start < %s::date + interval '1 month'")
            params += [month, month]
        if terms:
            conditions.append("(" + " and ".join(terms) + ")")
    if not conditions:
        return None
    found = conn.execute(
        "select source_file, source_line, count(*) over () from raw.usage_snapshots"
        f" where {' or '.join(conditions)} order by hour_start, source_file, source_line limit 1", params).fetchone()
    if found is None:
        return None
    file, line, count = found
    return f"snapshot at {file}:{line}" + (f" (and {count - 1} more)" if count > 1 else "")


def _error(what: str, outcome, nodes: tuple[NodeResult, ...], failed: list[NodeResult]) -> TransformError:
    lines = tuple(f"{n.resource_type} {n.name}: {n.message or n.status}" for n in failed)
    if outcome.exception is not None:
        lines += (f"{what} could not run: {_one_line(str(outcome.exception)) or type(outcome.exception).__name__}",)
    if not lines:
        lines = (f"{what} failed (see dbt_project/logs/dbt.log)",)
    skipped = sum(1 for n in nodes if n.status == "skipped")
    header = f"{what} failed: {len(failed)} failed" + (f", {skipped} skipped because of them" if skipped else "")
    return TransformError(header + "\n" + "\n".join(f"- {line}" for line in lines), lines)
