"""How good is anomaly detection? Precision and recall against labelled causes.

The simulator writes labelled anomalies into the usage (:class:`chargeback.ingest.simulate.Injection`)
and the bench changes the configuration on known days (a price change, a retention move); those are
the **injected** labels, whose recall is measured. The simulator's own unplanned one-hour bursts
(:func:`chargeback.ingest.simulate.bursts`) and the shipped price book's own changes are labels
too — a detection of one is right — but detection is not required to find them (a 3× burst in
one hour may be too small to matter), so they count for precision only.

A finding matches a label when tenant and meter agree and its day is in the label's days. An
injected label is found when some finding matches it; its cause is right when the first finding
matching it has the label's effect (volume, rate or mix) as its largest.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Sequence

from chargeback.ingest import simulate
from chargeback.insights.anomalies import Finding

BURST_METERS = ("ingested_gb", "scanned_gb", "query_cpu_seconds")
"""A burst of ingest: the simulator's scans (and so their CPU) follow ingest."""
SETTLE_DAYS = 7
"""After a lasting change (a price, a retention class) the expected value takes about a week to follow."""


@dataclasses.dataclass(frozen=True)
class Label:
    tenant_id: str
    meters: tuple[str, ...]
    first_day: dt.date
    last_day: dt.date
    effect: str
    """The effect the explanation should lead with: volume, rate or mix."""
    cause: str
    injected: bool = True

    def matches(self, f: Finding) -> bool:
        return f.tenant_id == self.tenant_id and f.meter in self.meters and self.first_day <= f.day <= self.last_day


INJECTED_METERS = {"source_spike": ("ingested_gb",), "silent_producer": ("ingested_gb", "alerts_fired"),
                   "query_storm": ("scanned_gb", "query_cpu_seconds")}


def injection_labels(injections: Iterable[simulate.Injection]) -> list[Label]:
    """A spike: the ingest of its days; a silent producer: its ingest and alerts; a query storm:
    its scans and query CPU (billed or cost to serve); a volume effect."""
    return [Label(i.tenant_id, INJECTED_METERS[i.kind], i.start.date(), (i.end - dt.timedelta(hours=1)).date(),
                  "volume", i.kind) for i in injections]


def lasting_change(tenant_ids: Iterable[str], meter: str, day: dt.date, effect: str, cause: str,
                   injected: bool = True) -> list[Label]:
    """A change from ``day`` on (a price version, a retention class): its first week."""
    return [Label(t, (meter,), day, day + dt.timedelta(days=SETTLE_DAYS - 1), effect, cause, injected)
            for t in tenant_ids]


def burst_labels(seed: int, tenant_ids: Iterable[str], start: dt.datetime, end: dt.datetime) -> list[Label]:
    """The simulator's own one-hour bursts, as labels that count for precision only."""
    return [Label(t, BURST_METERS, hour.date(), hour.date(), "volume", "burst", injected=False)
            for t in tenant_ids for hour, _ in simulate.bursts(seed, t, start, end)]


@dataclasses.dataclass(frozen=True)
class Score:
    precision: float
    recall: float
    cause_accuracy: float
    """Of the injected labels found, the share whose first finding leads with the label's effect."""
    findings: int
    injected: int
    found: int
    unlabelled: tuple[Finding, ...]
    missed: tuple[Label, ...]
    wrong_cause: tuple[tuple[Label, Finding], ...]


def score(findings: Sequence[Finding], labels: Sequence[Label]) -> Score:
    right = [f for f in findings if any(label.matches(f) for label in labels)]
    injected = [label for label in labels if label.injected]
    found, wrong = [], []
    for label in injected:
        hits = sorted((f for f in findings if label.matches(f)), key=lambda f: f.day)
        if hits:
            found.append(label)
            if hits[0].explanation.largest_effect != label.effect:
                wrong.append((label, hits[0]))
    return Score(
        precision=len(right) / len(findings) if findings else 1.0,
        recall=len(found) / len(injected) if injected else 1.0,
        cause_accuracy=(len(found) - len(wrong)) / len(found) if found else 1.0,
        findings=len(findings), injected=len(injected), found=len(found),
        unlabelled=tuple(f for f in findings if f not in right),
        missed=tuple(label for label in injected if label not in found),
        wrong_cause=tuple(wrong))
