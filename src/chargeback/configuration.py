"""The reviewed configuration: tenants, meters, cost pools and price books.

Finance and platform owners edit YAML files under ``config/``. They are validated
here (messages name the file and the entry) and then replace the ``config.*``
warehouse tables in one transaction: the whole configuration loads, or none does.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from chargeback import warehouse
from chargeback.settings import Settings, get_settings


class ConfigError(ValueError):
    """The configuration is invalid; the message says which file and entry, and why."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Meter(_Model):
    meter: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    unit: str
    kind: Literal["counter", "gauge"]
    description: str


class Tenant(_Model):
    tenant_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    name: str
    organisation: str
    business_unit: str
    team: str
    price_book: str
    billing_email: str | None = None


class Allocation(_Model):
    method: Literal["proportional"]
    driver: str


class CostPool(_Model):
    pool: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    description: str
    monthly_cost: Decimal = Field(ge=0, decimal_places=2)
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    valid_from: dt.date
    valid_to: dt.date | None = None
    allocation: Allocation


class PriceBook(_Model):
    price_book: str
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    valid_from: dt.date
    valid_to: dt.date | None = None
    prices: dict[str, Decimal]

    @model_validator(mode="after")
    def _non_negative(self) -> PriceBook:
        for meter, price in self.prices.items():
            if price < 0:
                raise ValueError(f"price of {meter} is negative ({price})")
        return self


class Configuration(_Model):
    meters: list[Meter]
    tenants: list[Tenant]
    cost_pools: list[CostPool]
    price_books: list[PriceBook]

    @property
    def meter_names(self) -> set[str]:
        return {m.meter for m in self.meters}

    @property
    def tenant_ids(self) -> list[str]:
        return [t.tenant_id for t in self.tenants]


_FILES = {
    "meters": "meters.yml",
    "tenants": "tenants.yml",
    "cost_pools": "cost_pools.yml",
    "price_books": "price_books.yml",
}


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
    if problems:
        raise ConfigError("invalid configuration:\n" + "\n".join(problems))
    cfg = Configuration(**data)
    _check_references(cfg, config_dir)
    return cfg


def _describe_entry(exc: ValidationError, path: Path, section: str, index: int, entry: object) -> str:
    ident = f"entry {index + 1}"
    if isinstance(entry, dict):
        ident = next((f"{k} {entry[k]}" for k in ("tenant_id", "meter", "pool", "price_book") if k in entry), ident)
    msgs = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(entry)"
        msgs.append(f"{path}: {section} {ident}, field {field}: {err['msg']}")
    return "\n".join(msgs)


def _check_references(cfg: Configuration, config_dir: Path) -> None:
    problems: list[str] = []
    meters = cfg.meter_names
    books = {b.price_book for b in cfg.price_books}
    seen: dict[str, set] = {"meter": set(), "tenant": set()}
    for m in cfg.meters:
        if m.meter in seen["meter"]:
            problems.append(f"{config_dir / 'meters.yml'}: meter {m.meter} is listed twice")
        seen["meter"].add(m.meter)
    for t in cfg.tenants:
        if t.tenant_id in seen["tenant"]:
            problems.append(f"{config_dir / 'tenants.yml'}: tenant {t.tenant_id} is listed twice")
        seen["tenant"].add(t.tenant_id)
        if t.price_book not in books:
            problems.append(
                f"{config_dir / 'tenants.yml'}: tenant {t.tenant_id} is billed on price book "
                f"'{t.price_book}', which price_books.yml does not define"
            )
    for p in cfg.cost_pools:
        if p.allocation.driver not in meters:
            problems.append(
                f"{config_dir / 'cost_pools.yml'}: pool {p.pool} is allocated by meter "
                f"'{p.allocation.driver}', which meters.yml does not define"
            )
    for b in cfg.price_books:
        for meter in b.prices:
            if meter not in meters:
                problems.append(
                    f"{config_dir / 'price_books.yml'}: price book {b.price_book} prices meter "
                    f"'{meter}', which meters.yml does not define"
                )
        for meter in sorted(meters - set(b.prices)):
            problems.append(
                f"{config_dir / 'price_books.yml'}: price book {b.price_book} has no price for meter '{meter}'"
            )
    if problems:
        raise ConfigError("invalid configuration:\n" + "\n".join(problems))


def apply(cfg: Configuration, settings: Settings | None = None) -> None:
    """Replace the ``config.*`` tables with ``cfg`` in one transaction."""
    warehouse.ensure_schema(settings)
    with warehouse.connect(settings) as conn, conn.cursor() as cur:
        cur.execute("lock table config.tenants, config.meters, config.cost_pools, config.prices in exclusive mode")
        cur.execute("delete from config.tenants; delete from config.meters; "
                    "delete from config.cost_pools; delete from config.prices")
        cur.executemany(
            "insert into config.meters (meter, unit, kind, description) values (%s, %s, %s, %s)",
            [(m.meter, m.unit, m.kind, m.description) for m in cfg.meters],
        )
        cur.executemany(
            "insert into config.tenants (tenant_id, tenant_name, organisation, business_unit, team,"
            " price_book, billing_email) values (%s, %s, %s, %s, %s, %s, %s)",
            [(t.tenant_id, t.name, t.organisation, t.business_unit, t.team, t.price_book, t.billing_email)
             for t in cfg.tenants],
        )
        cur.executemany(
            "insert into config.cost_pools (pool, description, monthly_cost, currency, valid_from, valid_to,"
            " method, driver_meter) values (%s, %s, %s, %s, %s, %s, %s, %s)",
            [(p.pool, p.description, p.monthly_cost, p.currency, p.valid_from, p.valid_to,
              p.allocation.method, p.allocation.driver) for p in cfg.cost_pools],
        )
        cur.executemany(
            "insert into config.prices (price_book, currency, valid_from, valid_to, meter, unit_price)"
            " values (%s, %s, %s, %s, %s, %s)",
            [(b.price_book, b.currency, b.valid_from, b.valid_to, meter, price)
             for b in cfg.price_books for meter, price in b.prices.items()],
        )


def load(config_dir: Path | None = None, settings: Settings | None = None) -> Configuration:
    """Validate ``config_dir`` and apply it to the warehouse."""
    settings = settings or get_settings()
    cfg = read(config_dir or settings.config_dir)
    apply(cfg, settings)
    return cfg
