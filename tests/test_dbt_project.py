"""House rules of the dbt project, read from its manifest (no warehouse needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def manifest(dbt_manifest: Path) -> dict:
    return json.loads(dbt_manifest.read_text())


def _models(manifest: dict) -> dict[str, dict]:
    return {uid: n for uid, n in manifest["nodes"].items() if n["resource_type"] == "model"}


def _layer(node: dict) -> str:
    return node["fqn"][1]  # chargeback / <layer> / ... / <model>


def test_every_stated_grain_is_proven_by_a_test_or_a_key(manifest):
    """meta.grain 'a x b x c' needs a unique / unique_combination_of_columns test over exactly
    those columns, or a primary-key constraint on its one column."""
    proven: dict[str, list[set[str]]] = {}
    for node in manifest["nodes"].values():
        meta = node.get("test_metadata") or {}
        kwargs = meta.get("kwargs") or {}
        if meta.get("name") == "unique_combination_of_columns":
            proven.setdefault(node["attached_node"], []).append(set(kwargs["combination_of_columns"]))
        elif meta.get("name") == "unique":
            proven.setdefault(node["attached_node"], []).append({kwargs["column_name"]})
    missing = []
    for uid, node in _models(manifest).items():
        grain = node["config"]["meta"].get("grain")
        if not grain:
            continue
        columns = {c.strip() for c in grain.split("(")[0].split(" x ")}
        keys = [{name} for name, column in node["columns"].items()
                if any(c["type"] == "primary_key" for c in column.get("constraints", []))]
        if columns not in proven.get(uid, []) + keys:
            missing.append(f"{node['name']}: {grain}")
    assert missing == []


def test_intermediate_models_never_read_marts(manifest):
    models = _models(manifest)
    backwards = [
        f"{node['name']} reads {models[parent]['name']}"
        for node in models.values() if _layer(node) == "intermediate"
        for parent in node["depends_on"]["nodes"] if parent in models and _layer(models[parent]) == "marts"
    ]
    assert backwards == []


def test_staging_reads_only_sources(manifest):
    models = _models(manifest)
    wrong = [f"{n['name']} reads {p}" for n in models.values() if _layer(n) == "staging"
             for p in n["depends_on"]["nodes"] if not p.startswith("source.")]
    assert wrong == []


def test_windowed_models_say_which_rows_a_window_owns(manifest):
    """Every windowed model deletes and rebuilds its window's rows (macros/windowed.sql):
    it must name the column and grain that decide them, or its delete would fail."""
    unnamed = [n["name"] for n in _models(manifest).values()
               if n["config"]["materialized"] == "windowed"
               and not {"window_column", "window_grain"} <= set(n["config"]["meta"])]
    assert unnamed == []


def test_marts_that_bi_reads_have_enforced_contracts(manifest):
    loose = [n["name"] for n in _models(manifest).values()
             if _layer(n) == "marts" and not n["config"]["contract"]["enforced"]]
    assert loose == []
