"""The shape of the reviewed configuration: pydantic models of tenants, meters, cost pools
and price books, with the rules a single entry must follow.

Messages are written for the finance and platform owners who edit ``config/*.yml``; rules
that span entries or files (references, overlapping versions) are checked by
:func:`chargeback.engine.configuration.read`.
"""

from __future__ import annotations

import datetime as dt
import itertools
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from chargeback.ingest.layout import (
    DATE_FOLDER,
    MAX_LABEL_KEY_CHARS,
    MAX_LABELS,
    MAX_SOURCE_CHARS,
    NO_SOURCE,
    unprintable,
)


class ConfigError(ValueError):
    """The configuration is invalid; the message says which file and entry, and why."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


MAX_PLAUSIBLE = Decimal("1e12")
"""No bound may be set above this: a month of such values still fits every mart and invoice."""


class Meter(_Model):
    """A meter and its plausibility bounds: a snapshot over ``max_per_snapshot``, or a
    tenant-hour whose snapshots add up to more than ``max_per_tenant_hour``, is quarantined."""

    meter: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    unit: str
    kind: Literal["counter", "gauge"]
    description: str
    max_per_snapshot: Decimal = Field(default=Decimal("1e9"), gt=0, le=MAX_PLAUSIBLE)
    max_per_tenant_hour: Decimal = Field(default=Decimal("1e10"), gt=0, le=MAX_PLAUSIBLE)

    @model_validator(mode="after")
    def _bounds(self) -> Meter:
        if self.max_per_tenant_hour < self.max_per_snapshot:
            raise ValueError(f"max_per_tenant_hour ({self.max_per_tenant_hour}) is below max_per_snapshot"
                             f" ({self.max_per_snapshot})")
        return self


class TenantTerms(_Model):
    """Monthly contract terms; a month is billed on the terms in force on its first day."""

    valid_from: dt.date
    valid_to: dt.date | None = None
    discount_percent: Decimal = Field(default=Decimal(0), ge=0, le=100)
    monthly_commitment: Decimal = Field(default=Decimal(0), ge=0, decimal_places=2)
    overage_uplift_percent: Decimal = Field(default=Decimal(0), ge=0)
    retention_days: int = Field(default=30, gt=0)
    source_retention_days: dict[str, int] = {}
    """Sources kept for another retention class than ``retention_days`` (docs/COST_ENGINE.md):
    their stored GB-months are priced at that class, the rest of the tenant's at the default."""

    @field_validator("source_retention_days")
    @classmethod
    def _sources(cls, value: dict[str, int]) -> dict[str, int]:
        for source, days in value.items():
            if not source.strip() or len(source) > MAX_SOURCE_CHARS:
                raise ValueError(f"source {source!r}: 1 to {MAX_SOURCE_CHARS} characters, as a snapshot's source")
            if unprintable(source) or (
                    source.startswith("(") and source.endswith(")")):
                raise ValueError(f"source {source!r}: no control characters, and not a name in parentheses"
                                 f" ({NO_SOURCE} is usage without a source; its class is retention_days)")
            if isinstance(days, bool) or days <= 0:
                raise ValueError(f"source {source!r}: retention days must be a positive whole number, not {days}")
        return value

    @model_validator(mode="after")
    def _monthly(self) -> TenantTerms:
        if self.valid_from.day != 1:
            raise ValueError(f"terms start on the first day of a month, not {self.valid_from}")
        if self.valid_to is not None and (self.valid_to.day != 1 or self.valid_to <= self.valid_from):
            raise ValueError(f"terms end on the first day of a later month, not {self.valid_to}")
        return self


class Tenant(_Model):
    tenant_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    name: str
    organisation: str
    business_unit: str
    team: str
    price_book: str
    billing_email: str | None = None
    start_date: dt.date | None = None
    """No usage before this day is accepted for the tenant (its onboarding)."""
    terms: list[TenantTerms] = []

    @field_validator("tenant_id")
    @classmethod
    def _not_a_day(cls, value: str) -> str:
        if DATE_FOLDER.match(value):
            raise ValueError(f"tenant_id {value!r} looks like a day (YYYY-MM-DD), which is a landing folder name")
        return value


class Activity(_Model):
    meter: str
    weight: Decimal = Field(gt=0)


Method = Literal["direct", "proportional", "even", "fixed", "activity_based"]

# which settings each method takes (besides method and share_percent)
_METHOD_FIELDS: dict[str, set[str]] = {
    "direct": {"tenant"},
    "proportional": {"driver", "drivers"},
    "even": set(),
    "fixed": {"percentages"},
    "activity_based": {"activities"},
}


class AllocationPart(_Model):
    """One allocation rule, or one part of a pool split into parts by ``share_percent``."""

    method: Method
    share_percent: Decimal = Field(default=Decimal(100), gt=0, le=100)
    tenant: str | None = None
    driver: str | None = None
    drivers: dict[str, Decimal] | None = None
    percentages: dict[str, Decimal] | None = None
    activities: dict[str, Activity] | None = None

    @model_validator(mode="after")
    def _settings_match_method(self) -> AllocationPart:
        given = {
            f for f in ("tenant", "driver", "drivers", "percentages", "activities") if getattr(self, f) is not None
        }
        allowed = _METHOD_FIELDS[self.method]
        extra = sorted(given - allowed)
        if extra:
            raise ValueError(f"method {self.method} takes no {', '.join(extra)}")
        needs = {
            "direct": ("tenant", "the tenant the pool belongs to"),
            "fixed": ("percentages", "each tenant's percentage"),
            "activity_based": ("activities", "the activities with their meter and weight"),
        }
        if self.method in needs and not given:
            field, what = needs[self.method]
            raise ValueError(f"method {self.method} needs `{field}`: {what}")
        if self.method == "proportional" and len(given) != 1:
            raise ValueError(
                "method proportional needs either `driver` (one meter) or `drivers` "
                "(meters with weights), not both and not neither"
            )
        for name, mapping in (("drivers", self.drivers), ("percentages", self.percentages)):
            for key, value in (mapping or {}).items():
                if value <= 0:
                    raise ValueError(f"{name} of {key} must be positive, not {value}")
        if self.percentages is not None and sum(self.percentages.values()) != 100:
            raise ValueError(f"fixed percentages add up to {sum(self.percentages.values())}, not 100")
        return self

    def components(self) -> list[tuple[str, str, str | None, Decimal]]:
        """(component, basis, meter, weight) rows of ``config.allocation_components``."""
        one = Decimal(1)
        if self.method in ("direct", "fixed"):
            return [(self.method, "fixed", None, one)]
        if self.method == "even":
            return [("even", "active", None, one)]
        if self.method == "proportional":
            drivers = self.drivers or {self.driver: one}
            return [(meter, "usage", meter, weight) for meter, weight in drivers.items()]
        return [(name, "usage", a.meter, a.weight) for name, a in (self.activities or {}).items()]

    def fixed_shares(self) -> dict[str, Decimal]:
        """Tenant -> percent, for ``config.allocation_fixed_shares``."""
        if self.method == "direct":
            return {self.tenant: Decimal(100)}
        return dict(self.percentages or {})

    def meters(self) -> list[str]:
        return [meter for _, _, meter, _ in self.components() if meter is not None]


class Capacity(_Model):
    meter: str
    per_hour: Decimal = Field(gt=0)


class CostPool(_Model):
    pool: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    description: str
    monthly_cost: Decimal = Field(ge=0, decimal_places=2)
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    valid_from: dt.date
    valid_to: dt.date | None = None
    capacity: Capacity | None = None
    idle: Literal["platform", "redistribute"] = "platform"
    allocation: list[AllocationPart] | None = None

    @field_validator("allocation", mode="before")
    @classmethod
    def _one_rule_is_one_part(cls, value: object) -> object:
        return [value] if isinstance(value, dict) else value

    @property
    def parts(self) -> list[AllocationPart]:
        return self.allocation or []


class Tier(_Model):
    """A tier of a price sheet. ``to``: the unit of the month where it ends, counted from the
    month's first unit, the free allowance included ("first 5 GB free, 5–1,000 GB at 0.50"
    is ``free_allowance: "5"`` and ``{to: "1000", unit_price: "0.50"}``)."""

    to: Decimal | None = Field(default=None, gt=0)
    up_to: Decimal | None = Field(default=None, gt=0)
    """Before issue 10: the end counted after the free allowance. Refused with how to rewrite it."""
    retention_days: int | None = Field(default=None, gt=0)
    unit_price: Decimal = Field(ge=0)


PricingModel = Literal["per_unit", "graduated", "volume", "package", "retention"]


class Price(_Model):
    """How one meter is priced in a price book version (docs/COST_ENGINE.md)."""

    model: PricingModel
    unit_price: Decimal | None = Field(default=None, ge=0)
    free_allowance: Decimal = Field(default=Decimal(0), ge=0)
    tiers: list[Tier] | None = None
    package_size: Decimal | None = Field(default=None, gt=0)
    package_price: Decimal | None = Field(default=None, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: object) -> object:
        # `meter: "0.50"` means per-unit at 0.50
        if isinstance(value, str | int | Decimal):
            return {"model": "per_unit", "unit_price": value}
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Price:
        m = self.model
        if m == "per_unit":
            if self.unit_price is None or self.tiers or self.package_size or self.package_price:
                raise ValueError("per_unit takes `unit_price` only")
        elif m in ("graduated", "volume"):
            if not self.tiers or self.unit_price is not None or self.package_size or self.package_price:
                raise ValueError(f"{m} takes `tiers` (each with `to` and unit_price)")
            self._no_up_to()
            bounds = [t.to for t in self.tiers]
            if any(t.retention_days is not None for t in self.tiers):
                raise ValueError(f"{m} tiers take no retention_days")
            if bounds[-1] is not None:
                raise ValueError(f"the last tier must have no `to` (it covers everything above {bounds[-1]})")
            if None in bounds[:-1]:
                raise ValueError("only the last tier may omit `to`")
            for lower, upper in itertools.pairwise(bounds[:-1]):
                if upper <= lower:
                    raise ValueError(f"tiers overlap or are out of order: to {upper} comes after to {lower}")
            if bounds[0] is not None and bounds[0] <= self.free_allowance:
                raise ValueError(
                    f"the first tier ends at {bounds[0]}, within the free allowance of {self.free_allowance}:"
                    " `to` counts from the first unit of the month, the free allowance included, so every"
                    " tier must end above the allowance")
        elif m == "package":
            if self.package_size is None or self.package_price is None or self.tiers or self.unit_price:
                raise ValueError("package takes `package_size` and `package_price`")
        elif m == "retention":
            if not self.tiers or self.unit_price is not None or self.package_size or self.package_price:
                raise ValueError("retention takes `tiers` (each with retention_days and unit_price)")
            days = [t.retention_days for t in self.tiers]
            if None in days or any(t.to is not None or t.up_to is not None for t in self.tiers):
                raise ValueError("retention tiers take retention_days and unit_price, no `to`")
            if days != sorted(set(days)):
                raise ValueError(f"retention tiers must be in ascending order of retention_days, not {days}")
        return self

    def _no_up_to(self) -> None:
        """Refuse tiers written the old way, saying how to rewrite them with the same prices."""
        if not any(t.up_to is not None for t in self.tiers):
            return
        allowance = self.free_allowance
        rewritten = ", ".join(
            "{" + (f'to: "{_plain(t.up_to + allowance)}", ' if t.up_to is not None else "")
            + f'unit_price: "{t.unit_price:f}"' + "}" for t in self.tiers)
        after = f" after the free allowance of {_plain(allowance)}" if allowance else ""
        raise ValueError(
            f"tiers end at `to`, counted from the first unit of the month with the free allowance included,"
            f" as a price sheet states them; `up_to` counted units{after} and is no longer read."
            f" For the same prices, write the tiers as: [{rewritten}]")

    def tier_rows(self) -> list[tuple[int, Decimal, Decimal | None, int | None, Decimal]]:
        """(tier, lower_bound, upper_bound, retention_days, unit_price) rows of ``config.price_tiers``.

        The warehouse keeps graduated and volume bounds in billable units, after the free
        allowance (the pricing SQL counts those): a tier's ``to`` less the allowance."""
        if self.model == "per_unit":
            return [(1, Decimal(0), None, None, self.unit_price)]
        if self.model == "package":
            return []
        if self.model == "retention":
            return [(i, Decimal(0), None, t.retention_days, t.unit_price) for i, t in enumerate(self.tiers, 1)]
        rows, lower = [], Decimal(0)
        for i, t in enumerate(self.tiers, 1):
            upper = None if t.to is None else t.to - self.free_allowance
            rows.append((i, lower, upper, None, t.unit_price))
            lower = upper
        return rows

    def retention_tier_for(self, retention_days: int) -> Tier | None:
        return next((t for t in self.tiers or [] if t.retention_days >= retention_days), None)


def _plain(value: Decimal) -> str:
    """``Decimal("1005.00") -> "1005"`` (no exponent, no trailing zeros)."""
    text = f"{value:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


class PriceBook(_Model):
    price_book: str
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    valid_from: dt.date
    valid_to: dt.date | None = None
    prices: dict[str, Price]


class Attribution(_Model):
    """``config/attribution.yml``: which snapshot label keys count (showback aggregates them);
    other keys are kept raw with the snapshot but not aggregated, so cardinality stays bounded."""

    label_keys: list[str] = Field(default=[], max_length=MAX_LABELS)

    @field_validator("label_keys")
    @classmethod
    def _keys(cls, keys: list[str]) -> list[str]:
        for key in keys:
            if not key or len(key) > MAX_LABEL_KEY_CHARS:
                raise ValueError(f"label key {key!r}: 1 to {MAX_LABEL_KEY_CHARS} characters, as a snapshot's label key")
            if key != key.strip() or unprintable(key):
                raise ValueError(f"label key {key!r}: no control characters, no leading or trailing spaces")
        repeated = sorted({k for k in keys if keys.count(k) > 1})
        if repeated:
            raise ValueError(f"label key(s) listed twice: {', '.join(repeated)}")
        return keys


class Configuration(_Model):
    meters: list[Meter]
    tenants: list[Tenant]
    cost_pools: list[CostPool]
    price_books: list[PriceBook]
    attribution: Attribution = Attribution()

    @property
    def meter_names(self) -> set[str]:
        return {m.meter for m in self.meters}

    @property
    def tenant_ids(self) -> list[str]:
        return [t.tenant_id for t in self.tenants]
