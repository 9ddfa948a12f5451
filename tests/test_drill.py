"""The explorer's position and its URL form, without a browser: a drill adds the clicked value and
groups by the next level, the breadcrumb drops what is below, every position survives its own
query string, and a query string naming no valid view is refused with the reason."""

from __future__ import annotations

import datetime as dt

import pytest

from chargeback.dashboard import drill

OCTOBER = dt.date(2026, 10, 1)


def test_clicking_down_from_the_top_follows_the_hierarchy_to_the_hour():
    pos = drill.Position(OCTOBER)
    seen = []
    for value in ("Acme Corp", "Retail", "pricing", "t002", "/prod/api", "ingested_gb", "2026-10-20", "05"):
        seen.append(pos.group)
        pos = pos.drill(value)
    assert seen == list(drill.LEVELS)
    assert pos.filter_map == {"organisation": "Acme Corp", "business_unit": "Retail", "team": "pricing",
                              "tenant": "t002", "source": "/prod/api", "meter": "ingested_gb", "day": "2026-10-20",
                              "hour": "05"}
    assert pos.at_bottom
    assert pos.groupable(("env",)) == []


def test_group_by_jumps_levels_and_the_breadcrumb_goes_back_up():
    pos = drill.Position(OCTOBER, by="tenant").drill("t002")
    assert pos.filter_map == {"tenant": "t002"}
    assert pos.group == "source"
    pos = pos.drill("/prod/api")
    crumbs = pos.breadcrumb()
    assert [text for text, _ in crumbs] == ["All", "Tenant: t002", "Source / user: /prod/api"]
    assert crumbs[1][1].filter_map == {"tenant": "t002"}
    assert crumbs[0][1].filters == ()


def test_labels_and_sources_are_not_mixed():
    pos = drill.Position(OCTOBER, filters=(("tenant", "t002"),))
    assert "label:env" in pos.groupable(("env",))
    by_env = drill.Position(OCTOBER, filters=(("tenant", "t002"),), by="label:env").drill("prod")
    assert by_env.label_filters == (("env", "prod"),)
    assert "source" not in by_env.groupable(("env",))
    assert "label:env" not in pos.drill("/prod/api").groupable(("env",))


@pytest.mark.parametrize("pos", [
    drill.Position(OCTOBER),
    drill.Position(OCTOBER, "margin", "separate", (("organisation", "Acme & Co"), ("team", "a=b")), "meter"),
    drill.Position(OCTOBER, "cost", "spread", (("tenant", "t1"), ("day", "2026-10-31"), ("hour", "23"))),
    drill.Position(OCTOBER, by="label:env", filters=(("tenant", "t1"),)),
    drill.Position(OCTOBER, filters=(("tenant", "t1"),), label_filters=(("env", "prod=eu"),)),
])
def test_every_position_survives_its_query_string(pos):
    assert drill.from_params(pos.to_params(), dt.date(2020, 1, 1)) == pos


@pytest.mark.parametrize(("params", "reason"), [
    ({"month": "2026-13"}, "expected YYYY-MM"),
    ({"ledger": "profit"}, "ledger 'profit'"),
    ({"idle": "hidden"}, "expected spread or separate"),
    ({"month": "2026-10", "day": "2026-11-01"}, "not in the month 2026-10"),
    ({"hour": "5"}, "with a day"),
    ({"day": "2026-10-02", "hour": "24"}, "0 to 23"),
    ({"by": "galaxy"}, "expected a level"),
    ({"tenant": "t1", "by": "tenant"}, "already filtered"),
    ({"by": "hour"}, "choose a day first"),
    ({"label0": "noequals"}, "KEY=VALUE"),
    ({"day": "2026-10-02", "hour": "5", "by": "meter"}, "one hour is the bottom"),
    ({"source": "/a", "label0": "env=prod"}, "by source or by label"),
    ({"label0": "env=prod", "by": "label:team"}, "one label key at a time"),
])
def test_a_query_string_naming_no_view_is_refused_with_the_reason(params, reason):
    with pytest.raises(drill.DrillError, match=reason):
        drill.from_params({"month": "2026-10", **params}, OCTOBER)
