"""Where Chargeback finds its warehouse, configuration, landing files and outputs.

Every location comes from an environment variable with a project-local default, so
the same code runs the zero-install demo (embedded PostgreSQL under ``.warehouse/``)
and a production deployment (``WAREHOUSE_DSN`` pointing at any PostgreSQL >= 15).
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path


def _project_root() -> Path:
    """The checkout this package lives in (``src/chargeback/platform`` -> repo root), else cwd."""
    here = Path(__file__).resolve().parents[3]
    if (here / "pyproject.toml").exists() and (here / "src" / "chargeback").is_dir():
        return here
    return Path.cwd()


@dataclass(frozen=True)
class Settings:
    """Resolved locations. Build one with :func:`get_settings`; never mutate."""

    root: Path
    warehouse_dsn: str | None
    """Explicit PostgreSQL DSN; ``None`` means the embedded server under ``embedded_dir``."""
    embedded_dir: Path
    database: str | None
    """Database to use (created if missing). ``None``: the one the DSN names, or ``chargeback``."""
    config_dir: Path
    landing: str
    """Landing location of snapshot files: a local path or any fsspec URL."""
    reports_out: str
    """Where invoice PDFs are written: a local path or any fsspec URL."""
    reports_dir: Path
    dbt_project_dir: Path
    dbt_profiles_dir: Path
    dbt_artifacts_dir: Path
    """Where dbt writes ``target/`` (the manifest, run results, partial parse) and ``logs/``:
    ``dbt_project/`` unless ``CHARGEBACK_DBT_ARTIFACTS`` says otherwise (processes that
    build at the same time, such as parallel test workers, each need their own)."""
    gx_dir: Path
    """GX project root for Data Docs (kept beside the warehouse, git-ignored)."""
    expectations_dir: Path
    restatement_hours: int = 168
    """How far back (hours before a run's window) an hourly run looks for late files."""
    quarantine_policy: str = "fail"
    """``fail``: an hour whose bad-row share exceeds ``max_bad_share`` fails the gate; ``warn``: never."""
    max_bad_share: Decimal = Decimal("0.01")
    """Share of an hour's rows (0..1) that may be quarantined before the gate fails it."""
    grace_period_days: int = 3
    """Days after a month ends during which its invoices stay drafts and late usage restates them."""
    trusted_producers: tuple[str, ...] = ("*",)
    """File-name patterns allowed in the shared hour folders (``usage/<day>/<HH>/``); every
    other file there is rejected. ``*`` trusts whoever storage permissions let write there."""
    max_file_bytes: int = 1 << 30
    """Largest landed file (bytes, after decompression) a load reads; a larger one is rejected."""
    max_line_bytes: int = 1 << 16
    """Longest line (bytes) of a landed file; a longer line is quarantined alone, unread."""
    platform_start: dt.date | None = None
    """No usage hour before this day is accepted (besides the first price-book version and a
    tenant's ``start_date``, which always bound it)."""
    invoice_sources_top: int = 5
    """The invoice appendix "where your usage came from": the top sources per meter it lists
    (the rest as "other"); printed only for a tenant with more than one source. 0: no appendix."""
    invoice_batch_size: int = 100
    """Final invoices per render batch: billing_monthly renders each batch as one mapped task, so
    a month of 1,000 tenants is ten tasks the workers share (docs/SCALE.md). 0: one batch."""


def _int_env(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text in (None, ""):
        return default
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, got {text!r}") from None
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {value}")
    return value


def _share_env(name: str, default: str) -> Decimal:
    text = os.environ.get(name) or default
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"{name} must be a number between 0 and 1, got {text!r}") from None
    if not 0 <= value <= 1:
        raise ValueError(f"{name} must be a number between 0 and 1, got {text!r}")
    return value


def get_settings() -> Settings:
    root = Path(os.environ.get("CHARGEBACK_HOME", _project_root())).resolve()
    state = root / ".warehouse"
    return Settings(
        root=root,
        warehouse_dsn=os.environ.get("WAREHOUSE_DSN") or None,
        embedded_dir=Path(os.environ.get("CHARGEBACK_EMBEDDED_DIR", state)),
        database=os.environ.get("CHARGEBACK_DATABASE") or None,
        config_dir=Path(os.environ.get("CHARGEBACK_CONFIG_DIR", root / "config")),
        landing=os.environ.get("CHARGEBACK_LANDING", str(root / "landing")),
        reports_out=os.environ.get("CHARGEBACK_REPORTS_OUT", str(root / "reports" / "out")),
        reports_dir=root / "reports",
        dbt_project_dir=root,
        dbt_profiles_dir=root / "dbt_project",
        dbt_artifacts_dir=Path(os.environ.get("CHARGEBACK_DBT_ARTIFACTS", root / "dbt_project")),
        gx_dir=Path(os.environ.get("CHARGEBACK_GX_DIR", state / "gx")),
        expectations_dir=root / "expectations",
        restatement_hours=_int_env("CHARGEBACK_RESTATEMENT_HOURS", 168),
        quarantine_policy=_policy(os.environ.get("CHARGEBACK_QUARANTINE_POLICY") or "fail"),
        max_bad_share=_share_env("CHARGEBACK_MAX_BAD_SHARE", "0.01"),
        grace_period_days=_int_env("CHARGEBACK_GRACE_PERIOD_DAYS", 3),
        trusted_producers=tuple(
            p.strip() for p in (os.environ.get("CHARGEBACK_TRUSTED_PRODUCERS") or "*").split(",") if p.strip()
        ),
        max_file_bytes=_int_env("CHARGEBACK_MAX_FILE_BYTES", 1 << 30),
        max_line_bytes=_int_env("CHARGEBACK_MAX_LINE_BYTES", 1 << 16),
        platform_start=_date_env("CHARGEBACK_PLATFORM_START"),
        invoice_sources_top=_int_env("CHARGEBACK_INVOICE_SOURCES_TOP", 5),
        invoice_batch_size=_int_env("CHARGEBACK_INVOICE_BATCH_SIZE", 100),
    )


def _date_env(name: str) -> dt.date | None:
    text = os.environ.get(name)
    if not text:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{name} must be a date (YYYY-MM-DD), got {text!r}") from None


def _policy(text: str) -> str:
    if text not in ("fail", "warn"):
        raise ValueError(f"CHARGEBACK_QUARANTINE_POLICY must be 'fail' or 'warn', got {text!r}")
    return text
