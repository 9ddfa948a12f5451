"""The reviewed configuration: tenants, meters, cost pools and price books.

Finance and platform owners edit YAML files under ``config/``. They are validated
here (messages name the file and the entry) and then replace the ``config.*``
warehouse tables in one transaction: the whole configuration loads, or none does.
"""

from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path

import yaml
from pydantic import ValidationError

from chargeback.engine.config_schema import (
    Attribution,
    ConfigError,
    Configuration,
    CostPool,
    Meter,
    PriceBook,
    Tenant,
    TenantTerms,
)
from chargeback.platform import warehouse
from chargeback.platform.settings import Settings, get_settings

_FILES = {
    "meters": "meters.yml",
    "tenants": "tenants.yml",
    "cost_pools": "cost_pools.yml",
    "price_books": "price_books.yml",
}
ATTRIBUTION_FILE = "attribution.yml"
"""Optional: without it no label key is aggregated (docs/SNAPSHOTS.md)."""


def read(config_dir: Path | None = None) -> Configuration:
    """Read and validate ``config_dir``; raise :class:`ConfigError` naming every problem."""
    config_dir = config_dir or get_settings().config_dir
    data: dict[str, list] = {}
    problems: list[str] = []
    for section, name in _FILES.items():
        path = config_dir / name
        if not path.exists():
            problems.append(f"{path}: file is missing")
            continue
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            problems.append(f"{path}: not valid YAML: {exc}")
            continue
        entries = doc.get(section) if isinstance(doc, dict) else None
        if not isinstance(entries, list):
            problems.append(f"{path}: expected a top-level list named '{section}'")
            continue
        model = {"meters": Meter, "tenants": Tenant, "cost_pools": CostPool, "price_books": PriceBook}[section]
        parsed = []
        for i, entry in enumerate(entries):
            try:
                parsed.append(model.model_validate(entry))
            except ValidationError as exc:
                problems.append(_describe_entry(exc, path, section, i, entry))
        data[section] = parsed
    attribution = _read_attribution(config_dir / ATTRIBUTION_FILE, problems)
    if problems:
        raise ConfigError("invalid configuration:\n" + "\n".join(problems))
    cfg = Configuration(**data, attribution=attribution)
    _check_references(cfg, config_dir)
    return cfg


def _read_attribution(path: Path, problems: list[str]) -> Attribution:
    """``attribution.yml`` (optional: absent, no label key is aggregated); problems appended."""
    if not path.exists():
        return Attribution()
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        problems.append(f"{path}: not valid YAML: {exc}")
        return Attribution()
    if not isinstance(doc, dict):
        problems.append(f"{path}: expected a mapping with `label_keys`")
        return Attribution()
    try:
        return Attribution.model_validate(doc)
    except ValidationError as exc:
        for err in exc.errors():
            field = "".join(f"[{p + 1}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
            problems.append(f"{path}: field {field or '(file)'}: {err['msg'].removeprefix('Value error, ')}")
        return Attribution()


def _describe_entry(exc: ValidationError, path: Path, section: str, index: int, entry: object) -> str:
    ident = f"entry {index + 1}"
    if isinstance(entry, dict):
        ident = next((f"{k} {entry[k]}" for k in ("tenant_id", "meter", "pool", "price_book") if k in entry), ident)
        if "valid_from" in entry and section in ("cost_pools", "price_books"):
            ident += f" (from {entry['valid_from']})"
    msgs = []
    for err in exc.errors():
        # list positions count from 1, as a reader of the YAML counts them: terms[1]
        field = "".join(f"[{p + 1}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
        field = field or "(entry)"
        msgs.append(f"{path}: {section} {ident}, field {field}: {err['msg'].removeprefix('Value error, ')}")
    return "\n".join(msgs)


def _overlaps(versions: list[tuple[dt.date, dt.date | None]]) -> list[str]:
    """Problems with effective-dated versions: an end not after its start, or two that overlap."""
    problems = []
    ordered = sorted(versions)
    for start, end in ordered:
        if end is not None and end <= start:
            problems.append(f"valid_to {end} is not after valid_from {start}")
    for (start, end), (next_start, _) in itertools.pairwise(ordered):
        if end is None or end > next_start:
            until = "open-ended" if end is None else f"until {end}"
            problems.append(f"the version from {start} ({until}) overlaps the version from {next_start}")
    return problems


def _check_references(cfg: Configuration, config_dir: Path) -> None:
    problems: list[str] = []
    meters = cfg.meter_names
    tenants = set(cfg.tenant_ids)
    books: dict[str, list[PriceBook]] = {}
    for b in cfg.price_books:
        books.setdefault(b.price_book, []).append(b)
    tenants_file, meters_file = config_dir / "tenants.yml", config_dir / "meters.yml"
    pools_file, books_file = config_dir / "cost_pools.yml", config_dir / "price_books.yml"

    seen: set[str] = set()
    for m in cfg.meters:
        if m.meter in seen:
            problems.append(f"{meters_file}: meter {m.meter} is listed twice")
        seen.add(m.meter)

    seen = set()
    for t in cfg.tenants:
        if t.tenant_id in seen:
            problems.append(f"{tenants_file}: tenant {t.tenant_id} is listed twice")
        seen.add(t.tenant_id)
        if t.price_book not in books:
            problems.append(
                f"{tenants_file}: tenant {t.tenant_id} is billed on price book "
                f"'{t.price_book}', which price_books.yml does not define"
            )
        for problem in _overlaps([(x.valid_from, x.valid_to) for x in t.terms]):
            problems.append(f"{tenants_file}: tenant {t.tenant_id}, terms: {problem}")
        for version in books.get(t.price_book, []):
            for meter, price in version.prices.items():
                if price.model != "retention":
                    continue
                for terms in t.terms or [TenantTerms(valid_from=dt.date(1970, 1, 1))]:
                    if price.retention_tier_for(terms.retention_days) is None:
                        problems.append(
                            f"{books_file}: price book {version.price_book} (from {version.valid_from}) "
                            f"has no {meter} retention tier of {terms.retention_days} days or more, "
                            f"which tenant {t.tenant_id} keeps its logs for"
                        )
                    for source, days in terms.source_retention_days.items():
                        if price.retention_tier_for(days) is None:
                            problems.append(
                                f"{tenants_file}: tenant {t.tenant_id}, terms from {terms.valid_from},"
                                f" source_retention_days.{source}: {days} days, but price book"
                                f" {version.price_book} (from {version.valid_from}) has no {meter} retention"
                                f" tier of {days} days or more")

    pools: dict[str, list[CostPool]] = {}
    for p in cfg.cost_pools:
        pools.setdefault(p.pool, []).append(p)
        where = f"{pools_file}: pool {p.pool} (from {p.valid_from})"
        if not p.parts:
            problems.append(f"{where} has no allocation rule: add `allocation:` with a method")
        if p.capacity is not None and p.capacity.meter not in meters:
            problems.append(
                f"{where}: capacity is measured by meter '{p.capacity.meter}', which meters.yml does not define"
            )
        shares = sum(part.share_percent for part in p.parts)
        if p.parts and shares != 100:
            problems.append(f"{where}: the parts' share_percent add up to {shares}, not 100")
        for part in p.parts:
            for meter in part.meters():
                if meter not in meters:
                    problems.append(f"{where} is allocated by meter '{meter}', which meters.yml does not define")
            for tenant in part.fixed_shares():
                if tenant not in tenants:
                    problems.append(f"{where} is allocated to tenant '{tenant}', which tenants.yml does not define")
    for pool, versions in pools.items():
        for problem in _overlaps([(v.valid_from, v.valid_to) for v in versions]):
            problems.append(f"{pools_file}: pool {pool}: {problem}")

    for name, versions in books.items():
        for problem in _overlaps([(v.valid_from, v.valid_to) for v in versions]):
            problems.append(f"{books_file}: price book {name}: {problem}")
        for b in versions:
            where = f"{books_file}: price book {name}"
            if len(versions) > 1:
                where += f" (from {b.valid_from})"
            for meter in b.prices:
                if meter not in meters:
                    problems.append(f"{where} prices meter '{meter}', which meters.yml does not define")
            for meter in sorted(meters - set(b.prices)):
                problems.append(f"{where} has no price for meter '{meter}'")
    if problems:
        raise ConfigError("invalid configuration:\n" + "\n".join(problems))


def drivers_without_usage(start: dt.datetime, end: dt.datetime, settings: Settings | None = None) -> list[str]:
    """Allocation rules in force in ``[start, end)`` whose driver meter has no usage there.

    Such a rule cannot allocate its pool: every hour of it stays unallocated. The month
    close refuses it with this list rather than invoice a month where a pool went nowhere.
    """
    sql = """
        with rules as (
            select distinct p.pool, p.valid_from, c.meter
            from config.cost_pools p
            join config.allocation_components c using (pool, valid_from)
            where c.meter is not null
              and p.valid_from < %(end)s::timestamptz
              and (p.valid_to is null or p.valid_to > %(start)s::timestamptz)
        )
        select r.pool, r.valid_from, r.meter
        from rules r
        where not exists (
            select from raw.usage_snapshots u
            where u.meter = r.meter and u.value > 0
              and u.hour_start >= greatest(%(start)s::timestamptz, r.valid_from::timestamptz)
              and u.hour_start < %(end)s::timestamptz
        )
        order by 1, 2, 3
    """
    with warehouse.connect(settings) as conn:
        rows = conn.execute(sql, {"start": start, "end": end}).fetchall()
    return [
        f"pool {pool} (rule from {valid_from}) is allocated by meter '{meter}', which has no usage "
        f"from {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC: check the rule or the meter's data"
        for pool, valid_from, meter in rows
    ]


def apply(cfg: Configuration, settings: Settings | None = None) -> None:
    """Replace the ``config.*`` tables with ``cfg`` in one transaction.

    Refused (nothing changes) when it would change a version that was in effect during
    a month whose invoices are final: see :func:`_refuse_changes_to_finalized_months`.
    """
    warehouse.ensure_schema(settings)
    with warehouse.connect(settings) as conn, conn.cursor() as cur:
        cur.execute(f"lock table {', '.join(_TABLES)} in exclusive mode")
        frozen_until = _finalized_until(cur)
        before = _frozen_versions(cur, frozen_until) if frozen_until else None
        cur.execute("".join(f"delete from {table};" for table in _TABLES))
        cur.executemany(
            "insert into config.meters (meter, unit, kind, description, max_per_snapshot, max_per_tenant_hour)"
            " values (%s, %s, %s, %s, %s, %s)",
            [(m.meter, m.unit, m.kind, m.description, m.max_per_snapshot, m.max_per_tenant_hour)
             for m in cfg.meters],
        )
        cur.executemany(
            "insert into config.tenants (tenant_id, tenant_name, organisation, business_unit, team,"
            " price_book, billing_email, start_date) values (%s, %s, %s, %s, %s, %s, %s, %s)",
            [
                (t.tenant_id, t.name, t.organisation, t.business_unit, t.team, t.price_book, t.billing_email,
                 t.start_date)
                for t in cfg.tenants
            ],
        )
        cur.executemany(
            "insert into config.tenant_terms (tenant_id, valid_from, valid_to, discount_percent,"
            " monthly_commitment, overage_uplift_percent, retention_days) values (%s, %s, %s, %s, %s, %s, %s)",
            [
                (
                    t.tenant_id,
                    x.valid_from,
                    x.valid_to,
                    x.discount_percent,
                    x.monthly_commitment,
                    x.overage_uplift_percent,
                    x.retention_days,
                )
                for t in cfg.tenants
                for x in t.terms
            ],
        )
        cur.executemany(
            "insert into config.tenant_source_retention (tenant_id, valid_from, source, retention_days)"
            " values (%s, %s, %s, %s)",
            [(t.tenant_id, x.valid_from, source, days)
             for t in cfg.tenants for x in t.terms for source, days in x.source_retention_days.items()],
        )
        cur.executemany("insert into config.label_keys (label_key) values (%s)",
                        [(key,) for key in cfg.attribution.label_keys])
        cur.executemany(
            "insert into config.cost_pools (pool, valid_from, valid_to, description, monthly_cost, currency,"
            " capacity_meter, capacity_per_hour, idle_policy) values (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [
                (
                    p.pool,
                    p.valid_from,
                    p.valid_to,
                    p.description,
                    p.monthly_cost,
                    p.currency,
                    p.capacity.meter if p.capacity else None,
                    p.capacity.per_hour if p.capacity else None,
                    p.idle,
                )
                for p in cfg.cost_pools
            ],
        )
        parts = [(p, i, part) for p in cfg.cost_pools for i, part in enumerate(p.parts, 1)]
        cur.executemany(
            "insert into config.allocation_rules (pool, valid_from, part, share_percent, method)"
            " values (%s, %s, %s, %s, %s)",
            [(p.pool, p.valid_from, i, part.share_percent, part.method) for p, i, part in parts],
        )
        cur.executemany(
            "insert into config.allocation_components (pool, valid_from, part, component, basis, meter, weight)"
            " values (%s, %s, %s, %s, %s, %s, %s)",
            [(p.pool, p.valid_from, i, *row) for p, i, part in parts for row in part.components()],
        )
        cur.executemany(
            "insert into config.allocation_fixed_shares (pool, valid_from, part, tenant_id, percent)"
            " values (%s, %s, %s, %s, %s)",
            [
                (p.pool, p.valid_from, i, tenant, pct)
                for p, i, part in parts
                for tenant, pct in part.fixed_shares().items()
            ],
        )
        cur.executemany(
            "insert into config.prices (price_book, valid_from, valid_to, currency, meter, pricing_model,"
            " free_allowance, package_size, package_price) values (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [
                (
                    b.price_book,
                    b.valid_from,
                    b.valid_to,
                    b.currency,
                    meter,
                    price.model,
                    price.free_allowance,
                    price.package_size,
                    price.package_price,
                )
                for b in cfg.price_books
                for meter, price in b.prices.items()
            ],
        )
        cur.executemany(
            "insert into config.price_tiers (price_book, valid_from, meter, tier, lower_bound, upper_bound,"
            " retention_days, unit_price) values (%s, %s, %s, %s, %s, %s, %s, %s)",
            [
                (b.price_book, b.valid_from, meter, *row)
                for b in cfg.price_books
                for meter, price in b.prices.items()
                for row in price.tier_rows()
            ],
        )
        if frozen_until:
            _refuse_changes_to_finalized_months(before, _frozen_versions(cur, frozen_until), frozen_until,
                                                settings)


# ---- the finalized-month guard (faults) ----------------------------------------------
# An issued (final) invoice must never change, and the marts are rebuilt from config.*:
# a price, tier, cost pool, allocation rule or contract term that was in effect during
# a finalized month is frozen up to the end of the last finalized month. A new version
# from the first day after it is the way to change it (effective dating).

class FinalizedMonthChange(ConfigError):
    """A configuration change would change finalized invoices; the message is the one line."""


# What of each versioned table was in effect before %(until)s, with valid_to clipped to
# it: closing a version later than that (to add a new one) is not a change to the past.
# Descriptions are text, not numbers, and may be corrected.
_FROZEN = {
    "price_books.yml": (
        ("price book {} (from {}), meter {}",
         "select price_book, valid_from, meter, least(coalesce(valid_to, 'infinity'), %(until)s), currency,"
         " pricing_model, free_allowance, package_size, package_price"
         " from config.prices where valid_from < %(until)s"),
        ("price book {} (from {}), meter {}",
         "select price_book, valid_from, meter, tier, lower_bound, upper_bound, retention_days, unit_price"
         " from config.price_tiers where valid_from < %(until)s"),
    ),
    "cost_pools.yml": (
        ("cost pool {} (from {})",
         "select pool, valid_from, least(coalesce(valid_to, 'infinity'), %(until)s), monthly_cost, currency,"
         " capacity_meter, capacity_per_hour, idle_policy from config.cost_pools where valid_from < %(until)s"),
        ("cost pool {} (from {})",
         "select pool, valid_from, part, share_percent, method"
         " from config.allocation_rules where valid_from < %(until)s"),
        ("cost pool {} (from {})",
         "select pool, valid_from, part, component, basis, meter, weight"
         " from config.allocation_components where valid_from < %(until)s"),
        ("cost pool {} (from {})",
         "select pool, valid_from, part, tenant_id, percent"
         " from config.allocation_fixed_shares where valid_from < %(until)s"),
    ),
    "tenants.yml": (
        ("terms of tenant {} (from {})",
         "select tenant_id, valid_from, least(coalesce(valid_to, 'infinity'), %(until)s), discount_percent,"
         " monthly_commitment, overage_uplift_percent, retention_days"
         " from config.tenant_terms where valid_from < %(until)s"),
        ("terms of tenant {} (from {})",
         "select tenant_id, valid_from, source, retention_days"
         " from config.tenant_source_retention where valid_from < %(until)s"),
    ),
}


def _finalized_until(cur) -> dt.date | None:
    """The first day after the last month whose invoices are final (``None``: none is)."""
    row = cur.execute("select max(period_end) from pipeline.invoices where status = 'final'").fetchone()
    return row[0] + dt.timedelta(days=1) if row and row[0] else None


def _frozen_versions(cur, until: dt.date) -> dict[str, set[tuple[str, tuple]]]:
    """Per file: (the version it belongs to, its row) of everything in effect before ``until``."""
    frozen: dict[str, set[tuple[str, tuple]]] = {}
    for file, queries in _FROZEN.items():
        rows = frozen.setdefault(file, set())
        for name, query in queries:
            for row in cur.execute(query, {"until": until}).fetchall():
                keys = name.count("{}")
                rows.add((name.format(*row[:keys]), tuple(row)))
    return frozen


def _refuse_changes_to_finalized_months(before: dict, after: dict, until: dt.date,
                                        settings: Settings | None) -> None:
    from chargeback.platform import events

    changed = sorted({(file, version) for file in before
                      for version, _ in before[file] ^ after[file]})
    if not changed:
        return
    last_month = (until - dt.timedelta(days=1)).strftime("%Y-%m")
    first_file, first = changed[0]
    others = f" (and {len(changed) - 1} more: {', '.join(v for _, v in changed[1:4])}" + (
        ", …)" if len(changed) > 4 else ")") if len(changed) > 1 else ""
    line = events.refuse(
        f"configuration change to {first}{others}",
        f"that version was in effect during months whose invoices are final (up to {last_month}),"
        " and changing it would change issued invoices; nothing was applied",
        f"leave it as it was and add a new version from {until.isoformat()} instead",
        where=first_file,
        settings=settings,
    )
    raise FinalizedMonthChange(line)


_TABLES = (
    "config.tenants",
    "config.tenant_terms",
    "config.tenant_source_retention",
    "config.meters",
    "config.cost_pools",
    "config.allocation_rules",
    "config.allocation_components",
    "config.allocation_fixed_shares",
    "config.prices",
    "config.price_tiers",
    "config.label_keys",
)


def load(config_dir: Path | None = None, settings: Settings | None = None) -> Configuration:
    """Validate ``config_dir`` and apply it to the warehouse."""
    settings = settings or get_settings()
    cfg = read(config_dir or settings.config_dir)
    apply(cfg, settings)
    return cfg
