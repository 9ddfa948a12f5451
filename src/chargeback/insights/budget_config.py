"""``config/budgets.yml``: monthly budgets per scope, with their thresholds and recipients.

Validated like the rest of ``config/`` (every message names the file, the budget and the
field) and kept in ``config.budgets`` for reports and BI. A budget applies to a month when
the version in force on the month's first day says so (``valid_from``/``valid_to`` on first
days of months, like tenant terms). Where a budget is silent, the file's ``defaults:`` apply,
and where those are silent, :data:`DEFAULTS` (docs/INSIGHTS.md, "Budgets and alerts").

The file is optional: without it there are no budgets. It is checked by
``chargeback config check`` and by every ``chargeback budgets check`` (which applies it),
never by the hourly pipeline: a broken budget stops budget alerts, not billing.
"""

from __future__ import annotations

import datetime as dt
import itertools
from decimal import Decimal
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from chargeback.engine import configuration
from chargeback.engine.config_schema import ConfigError, Configuration
from chargeback.platform import warehouse
from chargeback.platform.settings import Settings, get_settings

FILE = "budgets.yml"
LEVELS = ("organisation", "business_unit", "team", "tenant", "source", "label")
Ledger = Literal["billed", "cost"]
DEFAULTS = {
    "ledger": "billed",
    "actual": (Decimal(50), Decimal(80), Decimal(100)),
    "forecast": (Decimal(100),),
    "pace": Decimal(20),
}
"""What a budget gets when neither it nor the file's ``defaults:`` say otherwise."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _percentages(value: list[Decimal] | None) -> list[Decimal] | None:
    if value is None:
        return None
    for pct in value:
        if not 0 < pct <= 1000:
            raise ValueError(f"a threshold is a percentage of the budget above 0 and at most 1000, not {pct}")
    if len(set(value)) != len(value):
        raise ValueError(f"a threshold is listed twice: {', '.join(f'{p:f}' for p in value)}")
    return sorted(value)


class Thresholds(_Model):
    """Percentages of the budget. ``actual``: of the amount used to date; ``forecast``: of
    the month-end forecast (P50); ``pace``: points by which the share used may run ahead
    of the share of the month elapsed (``null``: no pace rule). ``[]`` turns a kind off."""

    actual: list[Decimal] | None = None
    forecast: list[Decimal] | None = None
    pace: Decimal | None = Field(default=None, gt=0, le=100)

    @field_validator("actual", "forecast")
    @classmethod
    def _check(cls, value: list[Decimal] | None) -> list[Decimal] | None:
        return _percentages(value)


class Recipients(_Model):
    """Where a budget's alerts go. Unset: the notifier's own channels (``CHARGEBACK_SMTP_TO``,
    ``CHARGEBACK_ALERT_WEBHOOK``). ``email``: these addresses instead of ``CHARGEBACK_SMTP_TO``
    (same mail server); ``webhook``: a name — ``default`` is ``CHARGEBACK_ALERT_WEBHOOK``, any
    other ``NAME`` is ``CHARGEBACK_ALERT_WEBHOOK_NAME`` (URLs are secrets: never in this file)."""

    email: list[str] | None = None
    webhook: str | None = Field(default=None, pattern=r"^[a-z][a-z0-9_]{0,39}$")

    @field_validator("email")
    @classmethod
    def _addresses(cls, value: list[str] | None) -> list[str] | None:
        for address in value or []:
            local, _, domain = address.partition("@")
            if not local or "." not in domain or any(c.isspace() or c in "<>,;\"'" for c in address) \
                    or len(address) > 254:
                raise ValueError(f"not an e-mail address: {address!r}")
        return value


class Scope(_Model):
    """What a budget covers: the deepest level given. ``organisation``; ``organisation`` +
    ``business_unit``; those + ``team``; ``tenant``; ``tenant`` + ``source``; or ``label`` +
    ``value`` (a label value across every tenant)."""

    organisation: str | None = None
    business_unit: str | None = None
    team: str | None = None
    tenant: str | None = None
    source: str | None = None
    label: str | None = None
    value: str | None = None

    @model_validator(mode="after")
    def _one_level(self) -> Scope:
        given = {k for k, v in self.model_dump().items() if v is not None}
        allowed = ({"organisation"}, {"organisation", "business_unit"}, {"organisation", "business_unit", "team"},
                   {"tenant"}, {"tenant", "source"}, {"label", "value"})
        if given not in allowed:
            raise ValueError(
                "a scope is one of: {organisation}, {organisation, business_unit}, {organisation, business_unit,"
                " team}, {tenant}, {tenant, source} or {label, value}; got {" + ", ".join(sorted(given)) + "}")
        return self

    @property
    def level(self) -> str:
        for level in ("label", "source", "tenant", "team", "business_unit"):
            if getattr(self, "value" if level == "label" else level) is not None:
                return level
        return "organisation"

    @property
    def key(self) -> str:
        """One text naming the scope: ``Acme Corp / Retail / pricing``, ``t001 / app-logs``, ``team=payments``."""
        if self.level == "label":
            return f"{self.label}={self.value}"
        parts = (self.tenant, self.source) if self.tenant else (self.organisation, self.business_unit, self.team)
        return " / ".join(p for p in parts if p is not None)


class Defaults(_Model):
    ledger: Ledger | None = None
    thresholds: Thresholds = Thresholds()
    recipients: Recipients | None = None


class Budget(_Model):
    budget: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$")
    description: str | None = None
    scope: Scope
    ledger: Ledger | None = None
    amount: Decimal = Field(gt=0, le=Decimal("1e15"), decimal_places=2)
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    valid_from: dt.date
    valid_to: dt.date | None = None
    thresholds: Thresholds = Thresholds()
    recipients: Recipients | None = None

    @field_validator("amount", mode="before")
    @classmethod
    def _decimal_text(cls, value: object) -> object:
        if isinstance(value, float):
            raise ValueError(f"write amounts as text (\"{value}\"), not as a YAML number: it would lose cents")
        return value

    @model_validator(mode="after")
    def _monthly(self) -> Budget:
        if self.valid_from.day != 1:
            raise ValueError(f"a budget starts on the first day of a month, not {self.valid_from}")
        if self.valid_to is not None and (self.valid_to.day != 1 or self.valid_to <= self.valid_from):
            raise ValueError(f"a budget ends on the first day of a later month, not {self.valid_to}")
        return self


class BudgetsFile(_Model):
    defaults: Defaults = Defaults()
    budgets: list[Budget] = []


class Effective(_Model):
    """A budget version with the defaults filled in: what ``config.budgets`` holds."""

    budget: str
    description: str | None
    level: str
    scope: Scope
    ledger: Ledger
    amount: Decimal
    currency: str
    valid_from: dt.date
    valid_to: dt.date | None
    actual: tuple[Decimal, ...]
    forecast: tuple[Decimal, ...]
    pace: Decimal | None
    email: tuple[str, ...] | None
    webhook: str | None

    def in_force(self, month: dt.date) -> bool:
        return self.valid_from <= month and (self.valid_to is None or month < self.valid_to)


def read(config_dir: Path | None = None, cfg: Configuration | None = None) -> list[Effective]:
    """Validate ``budgets.yml`` (absent: no budgets) against the configuration's tenants and org
    hierarchy; raise :class:`ConfigError` naming every problem, one line each."""
    config_dir = config_dir or get_settings().config_dir
    path = config_dir / FILE
    if not path.exists():
        return []
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid configuration:\n{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("budgets", []), list):
        raise ConfigError(f"invalid configuration:\n{path}: expected a top-level list named 'budgets'"
                          " (and optionally a mapping named 'defaults')")
    problems: list[str] = []
    extra = sorted(set(doc) - {"defaults", "budgets"})
    if extra:
        problems.append(f"{path}: unknown top-level key(s) {', '.join(map(str, extra))}: expected 'defaults' and"
                        " 'budgets'")
    defaults = Defaults()
    try:
        defaults = Defaults.model_validate(doc.get("defaults") or {})
    except ValidationError as exc:
        problems += _describe(exc, path, "defaults")
    budgets: list[Budget] = []
    for i, entry in enumerate(doc.get("budgets") or []):
        try:
            budgets.append(Budget.model_validate(entry))
        except ValidationError as exc:
            ident = f"budget {entry['budget']}" if isinstance(entry, dict) and "budget" in entry else f"entry {i + 1}"
            if isinstance(entry, dict) and "valid_from" in entry:
                ident += f" (from {entry['valid_from']})"
            problems += _describe(exc, path, f"budgets {ident}")
    problems += _check_references(budgets, path, cfg or configuration.read(config_dir), config_dir)
    if problems:
        raise ConfigError("invalid configuration:\n" + "\n".join(problems))
    return [_effective(b, defaults) for b in budgets]


def _describe(exc: ValidationError, path: Path, ident: str) -> list[str]:
    out = []
    for err in exc.errors():
        field = "".join(f"[{p + 1}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
        out.append(f"{path}: {ident}, field {field or '(entry)'}: {err['msg'].removeprefix('Value error, ')}")
    return out


def _check_references(budgets: list[Budget], path: Path, cfg: Configuration, config_dir: Path) -> list[str]:
    problems: list[str] = []
    tenants = {t.tenant_id: t for t in cfg.tenants}
    orgs = {t.organisation for t in cfg.tenants}
    units = {(t.organisation, t.business_unit) for t in cfg.tenants}
    teams = {(t.organisation, t.business_unit, t.team) for t in cfg.tenants}
    label_keys = _label_keys(config_dir)
    versions: dict[str, list[Budget]] = {}
    for b in budgets:
        versions.setdefault(b.budget, []).append(b)
        where = f"{path}: budgets budget {b.budget} (from {b.valid_from}), field scope"
        s = b.scope
        if s.tenant is not None and s.tenant not in tenants:
            problems.append(f"{where}.tenant: tenant '{s.tenant}' is not in tenants.yml")
        elif s.team is not None and (s.organisation, s.business_unit, s.team) not in teams:
            problems.append(f"{where}.team: no tenant of tenants.yml is in team '{s.team}' of"
                            f" {s.organisation} / {s.business_unit}")
        elif s.team is None and s.business_unit is not None and (s.organisation, s.business_unit) not in units:
            problems.append(f"{where}.business_unit: no tenant of tenants.yml is in business unit"
                            f" '{s.business_unit}' of {s.organisation}")
        elif s.level == "organisation" and s.organisation not in orgs:
            problems.append(f"{where}.organisation: no tenant of tenants.yml is in organisation '{s.organisation}'")
        if s.label is not None and label_keys is not None and s.label not in label_keys:
            problems.append(f"{where}.label: label key '{s.label}' is not one of attribution.yml's label_keys"
                            f" ({', '.join(sorted(label_keys))})")
    for name, vs in versions.items():
        ordered = sorted(vs, key=lambda v: v.valid_from)
        for a, b in itertools.pairwise(ordered):
            if a.valid_to is None or a.valid_to > b.valid_from:
                until = "open-ended" if a.valid_to is None else f"until {a.valid_to}"
                problems.append(f"{path}: budgets budget {name}: the version from {a.valid_from} ({until}) overlaps"
                                f" the version from {b.valid_from}")
    return problems


def _label_keys(config_dir: Path) -> set[str] | None:
    """The configured label keys (``attribution.yml``), or ``None`` when that file is absent."""
    path = config_dir / "attribution.yml"
    if not path.exists():
        return None
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return None  # configuration.read reports it
    keys = doc.get("label_keys") if isinstance(doc, dict) else None
    return {str(k) for k in keys} if isinstance(keys, list) else None


def _effective(b: Budget, d: Defaults) -> Effective:
    def pick(kind: str):
        own, default = getattr(b.thresholds, kind), getattr(d.thresholds, kind)
        value = own if own is not None else default if default is not None else DEFAULTS[kind]
        return tuple(value) if isinstance(value, list | tuple) else value

    recipients = b.recipients or d.recipients
    return Effective(
        budget=b.budget, description=b.description, level=b.scope.level, scope=b.scope,
        ledger=b.ledger or d.ledger or DEFAULTS["ledger"], amount=b.amount, currency=b.currency,
        valid_from=b.valid_from, valid_to=b.valid_to, actual=pick("actual"), forecast=pick("forecast"),
        pace=b.thresholds.pace if "pace" in b.thresholds.model_fields_set
        else d.thresholds.pace if "pace" in d.thresholds.model_fields_set else DEFAULTS["pace"],
        email=tuple(recipients.email) if recipients and recipients.email is not None else None,
        webhook=recipients.webhook if recipients else None,
    )


def apply(budgets: list[Effective], settings: Settings | None = None) -> None:
    """Replace ``config.budgets`` with ``budgets`` (one transaction)."""
    with warehouse.connect(settings) as conn, conn.cursor() as cur:
        cur.execute("lock table config.budgets in exclusive mode")
        cur.execute("delete from config.budgets")
        cur.executemany(
            "insert into config.budgets (budget_id, valid_from, valid_to, description, scope_level, scope_key,"
            " organisation, business_unit, team, tenant_id, source, label_key, label_value, ledger, amount,"
            " currency, actual_thresholds, forecast_thresholds, pace_points, email_to, webhook)"
            " values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [(b.budget, b.valid_from, b.valid_to, b.description, b.level, b.scope.key, b.scope.organisation,
              b.scope.business_unit, b.scope.team, b.scope.tenant, b.scope.source, b.scope.label, b.scope.value,
              b.ledger, b.amount, b.currency, list(b.actual), list(b.forecast), b.pace,
              list(b.email) if b.email is not None else None, b.webhook) for b in budgets],
        )
