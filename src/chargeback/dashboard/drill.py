"""The explorer's state: where a viewer stands in the drill-down, read from and written to the URL.

Levels, top to bottom: organisation → business unit → team → tenant → source → meter → day →
hour. A position is the filters chosen so far (a value per level) and what the next breakdown is
grouped by: by default the first level below the deepest filter, or any level not yet filtered
(``by``), or a configured label (``by=label:env``). Clicking a bar or a row adds the clicked
value as a filter and groups by the next level; the breadcrumb drops the filters below the
crumb clicked. Everything is in the query string (:meth:`Position.to_params`), so a link is the
view, and each drill is a browser history entry (the back button steps back a level).

Pure: no Streamlit, no warehouse.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

LEVELS = ("organisation", "business_unit", "team", "tenant", "source", "meter", "day", "hour")
PARAM = {"organisation": "org", "business_unit": "bu", "team": "team", "tenant": "tenant", "source": "source",
         "meter": "meter", "day": "day", "hour": "hour"}
LABEL = {"organisation": "Organisation", "business_unit": "Business unit", "team": "Team", "tenant": "Tenant",
         "source": "Source / user", "meter": "Meter", "day": "Day", "hour": "Hour"}
LEDGERS = ("billed", "cost", "margin")
LEDGER_LABEL = {"billed": "Billed", "cost": "Cost to serve", "margin": "Margin"}
IDLE = ("spread", "separate")


class DrillError(ValueError):
    """A query string that names no valid view (the page says so and shows the top)."""


@dataclass(frozen=True)
class Position:
    month: dt.date
    ledger: str = "billed"
    idle: str = "spread"
    filters: tuple[tuple[str, str], ...] = ()  # (level, value) in LEVELS order
    by: str | None = None  # a level, or "label:<key>"; None: the next level
    label_filters: tuple[tuple[str, str], ...] = field(default=())  # (label key, value)
    trace: bool = False  # "what these figures are made of" shown

    @property
    def filter_map(self) -> dict[str, str]:
        return dict(self.filters)

    @property
    def group(self) -> str:
        """What the breakdown is grouped by."""
        if self.by:
            return self.by
        deepest = max((LEVELS.index(level) for level, _ in self.filters), default=-1)
        return LEVELS[min(deepest + 1, len(LEVELS) - 1)]

    @property
    def at_bottom(self) -> bool:
        return self.group == "hour" and "hour" in self.filter_map

    def drill(self, value: str) -> Position:
        """The position after clicking ``value`` of the current breakdown."""
        group = self.group
        if group.startswith("label:"):
            key = group.split(":", 1)[1]
            return replace(self, by=None, label_filters=(*self.label_filters, (key, value)))
        if group == "hour":
            return replace(self, by=None, filters=_ordered({**self.filter_map, "hour": value}))
        return replace(self, by=None, filters=_ordered({**self.filter_map, group: value}))

    def up_to(self, level: str | None) -> Position:
        """The breadcrumb: keep the filters above and at ``level`` (None: none)."""
        if level is None:
            return replace(self, filters=(), by=None, label_filters=())
        keep = LEVELS.index(level)
        return replace(self, filters=tuple((lv, v) for lv, v in self.filters if LEVELS.index(lv) <= keep), by=None,
                       label_filters=())

    def breadcrumb(self) -> list[tuple[str, Position]]:
        """(text, position) from the top to here; the last is where the viewer stands."""
        crumbs = [("All", self.up_to(None))]
        crumbs += [(f"{LABEL[level]}: {value}", self.up_to(level)) for level, value in self.filters]
        crumbs += [(f"{key}: {value}", replace(self, by=None, label_filters=self.label_filters[:i + 1]))
                   for i, (key, value) in enumerate(self.label_filters)]
        return crumbs

    def to_params(self) -> dict[str, str]:
        params = {"month": f"{self.month:%Y-%m}", "ledger": self.ledger}
        if self.idle != "spread":
            params["idle"] = self.idle
        params.update({PARAM[level]: value for level, value in self.filters})
        if self.by:
            params["by"] = self.by
        for i, (key, value) in enumerate(self.label_filters):
            params[f"label{i}"] = f"{key}={value}"
        if self.trace:
            params["trace"] = "1"
        return params

    def groupable(self, label_keys: tuple[str, ...] = ()) -> list[str]:
        """What the viewer may group by here: the levels not filtered yet, then the labels."""
        taken = self.filter_map
        if "hour" in taken:  # the bottom: one hour of one day, nothing below to group by
            return []
        levels = [lv for lv in LEVELS if lv not in taken and not (lv == "hour" and "day" not in taken)]
        if self.label_filters:  # showback splits by sources or by one label key, not both
            return [lv for lv in levels if lv != "source"]
        if "source" in taken:
            return levels
        return levels + [f"label:{k}" for k in label_keys]


def _ordered(filters: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple((level, filters[level]) for level in LEVELS if level in filters)


def from_params(params: Mapping[str, str], default_month: dt.date) -> Position:
    """The position a query string names; anything invalid raises :class:`DrillError`."""
    month = default_month
    if text := params.get("month"):
        try:
            month = dt.date.fromisoformat(f"{text}-01")
        except ValueError as exc:
            raise DrillError(f"month {text!r}: expected YYYY-MM") from exc
    ledger = params.get("ledger", "billed")
    if ledger not in LEDGERS:
        raise DrillError(f"ledger {ledger!r}: expected one of {', '.join(LEDGERS)}")
    idle = params.get("idle", "spread")
    if idle not in IDLE:
        raise DrillError(f"idle {idle!r}: expected spread or separate")
    filters = {level: params[PARAM[level]] for level in LEVELS if params.get(PARAM[level])}
    if "day" in filters:
        try:
            day = dt.date.fromisoformat(filters["day"])
        except ValueError as exc:
            raise DrillError(f"day {filters['day']!r}: expected YYYY-MM-DD") from exc
        if (day.year, day.month) != (month.year, month.month):
            raise DrillError(f"day {day} is not in the month {month:%Y-%m}")
    if "hour" in filters and (
            "day" not in filters or not filters["hour"].isdigit() or not 0 <= int(filters["hour"]) <= 23):
        raise DrillError(f"hour {filters['hour']!r}: expected 0 to 23, with a day")
    by = params.get("by") or None
    if by and by not in LEVELS and not by.startswith("label:"):
        raise DrillError(f"by {by!r}: expected a level ({', '.join(LEVELS)}) or label:KEY")
    if by in filters:
        raise DrillError(f"by {by!r}: the view is already filtered to one {LABEL[by].lower()}")
    if by == "hour" and "day" not in filters:
        raise DrillError("by hour: choose a day first")
    if by and "hour" in filters:
        raise DrillError(f"by {by!r}: one hour is the bottom, nothing below it to group by")
    labels = []
    for i in range(8):
        if text := params.get(f"label{i}"):
            key, sep, value = text.partition("=")
            if not sep or not key:
                raise DrillError(f"label{i} {text!r}: expected KEY=VALUE")
            labels.append((key, value))
    if labels and ("source" in filters or by == "source"):
        raise DrillError("a view is by source or by label, not both (they are different splits of a tenant)")
    if len({key for key, _ in labels} | ({by[6:]} if by and by.startswith("label:") else set())) > 1:
        raise DrillError("one label key at a time")
    return Position(month, ledger, idle, _ordered(filters), by, tuple(labels), params.get("trace") == "1")
