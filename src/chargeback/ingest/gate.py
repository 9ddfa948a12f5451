"""The gate: Great Expectations validates a load run's staged snapshots before they are published.

The suite is data (``expectations/raw_usage_staging.json``); the load's window reaches it as
suite parameters at run time, and the known tenants and meters are read from ``config.*`` by its
own queries (a value set passed in is copied into every query GX builds: with 40,000 tenants the
gate took 5.9 s, reading the table in SQL 1.9 s). The quarantine policy (bad-row share per
landed hour, files rejected whole) joins the suite as expectations under ``fail``. The suites run through
:mod:`chargeback.platform.validation`, which records every run in ``pipeline.validations``
and GX Data Docs.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

from chargeback.ingest import policy
from chargeback.platform.periods import format_window
from chargeback.platform.periods import parse_instant as utc
from chargeback.platform.settings import Settings, get_settings
from chargeback.platform.validation import (
    SuiteResult,
    SuiteRun,
    ValidationError,
    failure_message,
    fresh_spec,
    load_suite,
    run_suites,
    suite_table,
)

log = logging.getLogger(__name__)

SUITE = "raw_usage_staging"


class GateFailed(ValidationError):
    """Staged rows broke the gate's suite; they must not be published. ``result`` says why."""

    @property
    def result(self) -> SuiteResult:
        return self.results[0]


class GateNotEvaluated(ValidationError):
    """The gate could not evaluate an expectation (the warehouse went away, a query failed):
    no verdict on the data. The load stays staged and a retry of the gate decides."""


GateResult = SuiteResult
"""The gate validates one table, so its result is that suite run's."""


def validate_staged(
    load_id: int,
    window_start: dt.datetime | str,
    window_end: dt.datetime | str,
    settings: Settings | None = None,
) -> GateResult:
    """Validate ``raw.usage_staging where load_id = load_id`` against the gate's suite.

    ``[window_start, window_end)`` is the load run's window: every snapshot's hour must lie
    in it. Records the run in ``pipeline.validations`` and Data Docs, and raises
    :class:`GateFailed` (naming the table, each failed expectation and example rows as
    ``file:line field=value``) if any expectation fails. A load with no rows passes.
    """
    settings = settings or get_settings()
    start, end = utc(window_start), utc(window_end)
    if end <= start:
        raise ValueError(f"empty window: window_end {end:%Y-%m-%dT%H:%MZ} is not after window_start")
    load_id = int(load_id)
    policy.apply(load_id, settings)  # hold back the producers over the policy; the others publish
    spec = policy_suite(load_suite(SUITE, settings), load_id, settings)
    table = suite_table(spec)
    run = SuiteRun(
        spec=spec,
        query=f"select * from {table} where load_id = {load_id}",
        parameters={
            "window_start": start,
            "window_end": end,
        },
        load_id=load_id,
        window_start=start,
        window_end=end,
    )
    (result,) = run_suites([run], run_name=f"load-{load_id}", settings=settings)
    if result.errored_expectations:
        message = failure_message(f"gate could not validate {table} (load {load_id}, {format_window(start, end)});"
                                  " the load stays staged: retry the task", [result])
        raise GateNotEvaluated(message, [result])
    if not result.success:
        raise GateFailed(
            failure_message(f"gate failed for {table} (load {load_id}, {format_window(start, end)})", [result]),
            [result])
    return result


def policy_suite(spec: Mapping[str, Any], load_id: int, settings: Settings) -> dict[str, Any]:
    """The gate's suite for one load under ``settings.quarantine_policy``.

    The expectations marked ``meta.quarantine_policy`` (bad-row share per landed hour, no file
    rejected whole) get the load id and ``max_bad_share`` filled in under ``fail``, and are
    left out under ``warn``: quarantined rows are then only recorded and logged as warnings.
    """
    spec = fresh_spec(spec)
    kept = []
    for expectation in spec["expectations"]:
        if (expectation.get("meta") or {}).get("quarantine_policy"):
            if settings.quarantine_policy == "warn":
                continue
            kwargs = expectation["kwargs"]
            kwargs["unexpected_rows_query"] = kwargs["unexpected_rows_query"].replace("{load_id}", str(int(load_id)))
        kept.append(expectation)
    spec["expectations"] = kept
    return spec
