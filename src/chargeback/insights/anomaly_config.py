"""``config/anomalies.yml``: when a day is an anomaly, and how alerts are delivered.

The file is optional; without it the defaults of :class:`chargeback.insights.detect.Thresholds`
hold (docs/INSIGHTS.md "Anomalies" states them) and every new anomaly is sent on its own.
Overrides per meter and per tenant change any threshold for a series (a big tenant may want a
higher floor in currency, a small one a lower one)::

    defaults:
      z: 3.5                 # robust z-score on log(1 + amount), both directions
      min_amount: "10.00"    # the day's impact in currency, at least
      min_share: 0.05        # ... and at least this share of the tenant's expected daily amount
      min_history_days: 14
      drop_as_missing: 0.5   # a drop below half the expected value may be missing data
    delivery: each           # or digest: one message a day listing every new anomaly
    digest_hour_utc: 8
    meters:                  # per meter (storage is a small line of every bill)
      stored_gb: {min_share: 0.01}
    tenants:                 # per tenant, over the meter's
      t014: {min_amount: "50.00"}
"""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from chargeback.insights.detect import Thresholds
from chargeback.platform.settings import get_settings

FILE = "anomalies.yml"


class ConfigError(ValueError):
    """``anomalies.yml`` is invalid: the message names the file and every field at fault."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ThresholdSettings(_Model):
    z: float | None = Field(None, gt=0)
    min_amount: Decimal | None = Field(None, ge=0, decimal_places=2)
    min_share: float | None = Field(None, ge=0, le=1)
    min_history_days: int | None = Field(None, ge=7, le=28)
    drop_as_missing: float | None = Field(None, gt=0, lt=1)

    def apply(self, base: Thresholds) -> Thresholds:
        return dataclasses.replace(base, **{k: v for k, v in self.model_dump().items() if v is not None})


class File(_Model):
    defaults: ThresholdSettings = ThresholdSettings()
    delivery: Literal["each", "digest"] = "each"
    digest_hour_utc: int = Field(8, ge=0, le=23)
    meters: dict[str, ThresholdSettings] = {}
    tenants: dict[str, ThresholdSettings] = {}


@dataclasses.dataclass(frozen=True)
class AnomalyConfig:
    """The thresholds in force and the delivery mode. Per series, the defaults, then the meter's
    overrides, then the tenant's (a tenant's own floor wins over a meter's)."""

    thresholds: Thresholds = dataclasses.field(default_factory=Thresholds)
    tenants: dict[str, ThresholdSettings] = dataclasses.field(default_factory=dict)
    delivery: str = "each"
    digest_hour_utc: int = 8
    meters: dict[str, ThresholdSettings] = dataclasses.field(default_factory=dict)

    def for_series(self, tenant_id: str, meter: str) -> Thresholds:
        thresholds = self.thresholds
        for override in (self.meters.get(meter), self.tenants.get(tenant_id)):
            if override is not None:
                thresholds = override.apply(thresholds)
        return thresholds


def read(config_dir: Path | None = None) -> AnomalyConfig:
    """Validate ``anomalies.yml`` (absent: the defaults); :class:`ConfigError` names each problem."""
    path = (config_dir or get_settings().config_dir) / FILE
    if not path.exists():
        return AnomalyConfig()
    try:
        doc = yaml.safe_load(path.read_text()) or {}
        parsed = File.model_validate(doc)
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid configuration:\n{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "(file)"
            lines.append(f"{path}: field {field}: {err['msg'].removeprefix('Value error, ')}")
        raise ConfigError("invalid configuration:\n" + "\n".join(lines)) from None
    return AnomalyConfig(parsed.defaults.apply(Thresholds()), dict(parsed.tenants), parsed.delivery,
                         parsed.digest_hour_utc, dict(parsed.meters))
