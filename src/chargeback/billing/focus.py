"""FinOps FOCUS export: a month of ``marts.fct_focus_charges`` as a FOCUS 1.2 file.

The mart (``dbt_project/models/marts/fct_focus_charges.sql``) does the mapping; this
module only reads a month of it and writes it out exactly (no float ever: CSV gets the
warehouse's numeric text, Parquet gets ``decimal128`` columns). How Chargeback maps to
FOCUS (docs/FOCUS.md has the full table):

- Who: ProviderName = PublisherName = InvoiceIssuerName = the platform (dbt var
  ``focus_provider_name``, default "Chargeback Log Platform"). BillingAccount = the
  tenant's organisation, SubAccount = the tenant; cost the platform keeps (idle capacity,
  unallocated cost) is on the platform's own account (``platform``) with no sub account.
  Tags: the org hierarchy, as provider tags ``chargeback:organisation`` / ``business_unit``
  / ``team``. ServiceCategory "Management and Governance", subcategory "Observability".
- Billed (``x_ChargeSource`` = ``invoice``, one row per invoice line): usage and free
  allowance lines are ChargeCategory Usage, BilledCost = EffectiveCost = the line amount;
  ListCost = PricingQuantity x ListUnitPrice and ContractedCost = PricingQuantity x
  ContractedUnitPrice (the tenant's negotiated discount) are unrounded, because FOCUS
  wants those products exact; the invoice's rounded figures are ``x_InvoiceListAmount`` and
  ``x_InvoiceDiscountAmount``. The commitment true-up and the overage uplift are
  Adjustment (FOCUS: not usage, purchase, tax or credit) with all costs = the amount.
- Allocated (``x_ChargeSource`` = ``allocation``, one row per month x tenant x pool x part
  x component x cost type): the cost to serve, shown and not billed, so BilledCost = 0 and
  EffectiveCost = ListCost = ContractedCost = the allocated cost, priced as 1 Month of the
  share. FOCUS 1.3 split-cost columns: ResourceId = the pool (origin charge),
  AllocatedResourceId/Name = the tenant (null for the unallocated portion),
  AllocatedMethodId = the method, AllocatedMethodDetails = {"Elements": [{AllocatedRatio,
  UsageUnit, UsageQuantity}], x_Pool, x_Part, x_Component, x_CostType, x_DriverMeter}.
- InvoiceId: the invoice number once the month is closed and the tenant's invoice issued
  (``pipeline.invoices``, final), else the mart's provisional ``YYYY-MM/<tenant>``.
- Corrections (``x_ChargeSource`` = ``correction``, one row per line of a credit or debit
  note issued at the close of the month, docs/MONTH_CLOSE.md): ChargeClass ``Correction``,
  in the billing period the note was issued in, ChargePeriod = the corrected month,
  ChargeCategory Adjustment, all costs = the signed difference, InvoiceId = the note's number,
  ChargeDescription naming the invoice it corrects. Read from the issued notes at export
  time, not from the marts: issued documents do not change.

Files: ``--out FILE`` gets the CSV; the Parquet goes next to it (``FILE`` with the suffix
``.parquet``). Parquet needs ``pyarrow``; without it the CSV is still written and the
result says the Parquet was skipped. :func:`validate` runs the FinOps Foundation's
``focus-validator`` (its own Python 3.12 venv, ``make focus-validator``) on a file, with
its bundled FOCUS 1.2 rules and downloads blocked.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as dt
import json
import os
import re
import subprocess
import tempfile
import unicodedata
from decimal import Decimal
from pathlib import Path

from chargeback.platform.periods import month_window

FOCUS_VERSION = "1.2"
FORMATS = ("both", "csv", "parquet")

# What the platform supports, in the validator's terms: the conditional FOCUS rules that
# apply to Chargeback. Not claimed: commitment discounts (a minimum spend is not one),
# capacity reservations, regions and zones, several pricing categories / account types,
# provisioned-resource billing, virtual currency, pricing in another currency.
APPLICABILITY_CRITERIA = (
    "ACCOUNT_NAMING_SUPPORTED",
    "NEGOTIATED_PRICING_SUPPORTED",
    "PUBLIC_PRICE_LIST_SUPPORTED",
    "SUB_ACCOUNT_SUPPORTED",
    "TAGGING_SUPPORTED",
    "UNIT_PRICING_SUPPORTED",
    "USAGE_MEASUREMENT_SUPPORTED",
)

# focus-validator 2.2.1 evaluates the two alternatives of "InvoiceId nullability"
# (C-003-C = C-004-C OR C-005-C: null when not invoiced, not null when invoiced) over the
# whole file, without their conditions, so one of them fails on any file. A failure of
# the key is accepted only when the rule of the value passed.
KNOWN_VALIDATOR_DEFECTS = {
    "InvoiceId-C-004-C": "InvoiceId-C-003-C",
    "InvoiceId-C-005-C": "InvoiceId-C-003-C",
}

_REPO = Path(__file__).resolve().parents[3]
_NO_NETWORK = "http://127.0.0.1:9"  # a closed port: any download attempt fails at once
_RESULT = re.compile(r"\b([A-Za-z]+-[A-Z]-\d{3}-[MOC]): (PASS|FAIL|SKIPPED)\b")
_TOTALS = re.compile(r"Total: (\d+) \| Pass: (\d+) \| Fail: (\d+) \| Skipped: (\d+)")


class FocusExportError(RuntimeError):
    """The export or its validation cannot be done; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class ExportResult:
    period: str
    rows: int
    files: tuple[Path, ...]
    parquet_skipped: str | None = None  # why no Parquet was written, when it was wanted


@dataclasses.dataclass(frozen=True)
class ValidationReport:
    """What ``focus-validator`` said about one file."""

    path: Path
    command: tuple[str, ...]
    total: int
    passed: int
    failed: int
    skipped: int
    statuses: dict[str, str]  # rule id -> PASS | FAIL | SKIPPED
    output: str

    @property
    def errors(self) -> list[str]:
        """Failed rules, less the known validator defects whose parent rule passed."""
        return sorted(
            rule for rule, status in self.statuses.items()
            if status == "FAIL"
            and self.statuses.get(KNOWN_VALIDATOR_DEFECTS.get(rule, ""), "") != "PASS"
        )

    @property
    def ok(self) -> bool:
        return self.total > 0 and not self.errors

    def summary(self) -> str:
        excused = self.failed - len(self.errors)
        text = (f"{self.path.name}: FOCUS {FOCUS_VERSION} validator: {self.total} rules, {self.passed} passed, "
                f"{self.failed} failed, {self.skipped} skipped")
        if excused:
            text += f" ({excused} known validator defect{'s' if excused > 1 else ''}: InvoiceId-C-003-C passed)"
        return text + (f"; errors: {', '.join(self.errors)}" if self.errors else "")


# --------------------------------------------------------------------------- export


def export(period: str, out: str | os.PathLike[str], *, fmt: str = "both", settings=None) -> ExportResult:
    """Write the month's FOCUS charges to ``out`` (CSV) and/or Parquet; see the module doc."""
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    start, _ = month_window(period)
    columns, rows = read_month(start.date(), settings)
    if not rows:
        raise FocusExportError(f"no FOCUS charges for {period} in marts.fct_focus_charges: "
                               f"build the month first (chargeback transform --month {period})")
    out = Path(out)
    files: list[Path] = []
    skipped = None
    if fmt in ("both", "csv"):
        write_csv(out, columns, rows)
        files.append(out)
    if fmt in ("both", "parquet"):
        target = out if fmt == "parquet" else parquet_path(out)
        try:
            write_parquet(target, columns, rows)
            files.append(target)
        except ModuleNotFoundError as exc:
            if fmt == "parquet":
                raise FocusExportError("Parquet needs pyarrow (pip install pyarrow), or use --format csv") from exc
            skipped = "pyarrow is not installed (pip install pyarrow)"
    return ExportResult(period, len(rows), tuple(files), skipped)


def parquet_path(csv_path: Path) -> Path:
    """``focus.csv`` -> ``focus.parquet``; ``focus`` -> ``focus.parquet``."""
    return csv_path.with_suffix(".parquet") if csv_path.suffix.lower() == ".csv" else Path(f"{csv_path}.parquet")


@dataclasses.dataclass(frozen=True)
class Column:
    name: str
    kind: str  # numeric | timestamp | integer | json | text
    scale: int | None = None  # declared numeric scale, e.g. 2 for numeric(18,2)


def read_month(month: dt.date, settings=None) -> tuple[list[Column], list[tuple]]:
    """The month's rows of ``marts.fct_focus_charges`` (ordered by x_ChargeId), with the
    issued invoice number as InvoiceId where there is one, ready for a FOCUS file (JSON as
    text, strings folded to ASCII)."""
    from psycopg import sql

    from chargeback.platform import warehouse

    with warehouse.connect(settings) as conn:
        described = conn.execute(
            """
            select column_name, data_type, numeric_scale from information_schema.columns
            where table_schema = 'marts' and table_name = 'fct_focus_charges'
            order by ordinal_position
            """
        ).fetchall()
        if not described:
            raise FocusExportError("marts.fct_focus_charges does not exist: run the transform first")
        columns, select = [], []
        for name, data_type, scale in described:
            ident = sql.SQL("f.{}").format(sql.Identifier(name))
            if name == "InvoiceId":
                expr = sql.SQL("coalesce(i.invoice_number, {})").format(ident)
            elif data_type in ("jsonb", "json"):
                expr = sql.SQL("{}::text").format(ident)
            else:
                expr = ident
            select.append(expr)
            kind = {"numeric": "numeric", "timestamp with time zone": "timestamp", "integer": "integer",
                    "jsonb": "json", "json": "json"}
            columns.append(Column(name, kind.get(data_type, "text"), scale))
        query = sql.SQL(
            """
            select {} from marts.fct_focus_charges as f
            left join pipeline.invoices as i
                on i.tenant_id = f."SubAccountId" and i.period_start = %(month)s
                and i.document_type = 'invoice' and i.status = 'final'
            where f."BillingPeriodStart" = (%(month)s::timestamp at time zone 'UTC')
            order by f."x_ChargeId"
            """
        ).format(sql.SQL(", ").join(select))
        rows = conn.execute(query, {"month": month}).fetchall()
        rows += _correction_rows(conn, columns, rows, month)
    return columns, [_for_focus(columns, row) for row in rows]


# The columns every row of an export shares (who provides the service), copied onto corrections.
_SHARED_COLUMNS = ("InvoiceIssuerName", "ProviderName", "PublisherName", "ServiceCategory", "ServiceName",
                   "ServiceSubcategory")


def _correction_rows(conn, columns: list[Column], rows: list[tuple], month: dt.date) -> list[tuple]:
    """One FOCUS row per line of the credit and debit notes issued at the close of ``month``."""
    notes = conn.execute(
        """
        select n.invoice_number, n.corrects, n.tenant_id, n.period_start, n.currency, l.line_no, l.line_type,
               l.meter, l.description, l.list_amount, l.discount_amount, l.amount,
               t.organisation, t.tenant_name, t.business_unit, t.team
        from pipeline.invoices as n
        join pipeline.invoice_lines as l using (document_id)
        left join marts.dim_tenants as t on t.tenant_id = n.tenant_id
        where n.document_type in ('credit_note', 'debit_note') and n.status = 'final' and n.close_period = %s
        order by n.invoice_number, l.line_no
        """,
        (month,),
    ).fetchall()
    if not notes:
        return []
    names = [c.name for c in columns]
    shared = dict(zip(names, rows[0], strict=True)) if rows else {}
    utc = dt.UTC
    billing_start = dt.datetime(month.year, month.month, 1, tzinfo=utc)
    billing_end = (billing_start + dt.timedelta(days=32)).replace(day=1)
    out = []
    for (number, corrects, tenant_id, period_start, currency, line_no, line_type, meter, description, list_amount,
         discount_amount, amount, organisation, tenant_name, business_unit, team) in notes:
        charge_start = dt.datetime(period_start.year, period_start.month, 1, tzinfo=utc)
        values = {name: shared.get(name) for name in _SHARED_COLUMNS}
        values.update({
            "BilledCost": amount, "EffectiveCost": amount, "ListCost": amount, "ContractedCost": amount,
            "PricingCurrencyEffectiveCost": amount,
            "BillingAccountId": organisation, "BillingAccountName": organisation, "BillingCurrency": currency,
            "BillingPeriodStart": billing_start, "BillingPeriodEnd": billing_end,
            "ChargeCategory": "Adjustment", "ChargeClass": "Correction", "ChargeFrequency": "One-Time",
            "ChargeDescription": f"Correction of invoice {corrects} ({period_start:%Y-%m}): {description}"
                                 + (f" [{meter}]" if meter else ""),
            "ChargePeriodStart": charge_start, "ChargePeriodEnd": (charge_start + dt.timedelta(days=32)).replace(day=1),
            "InvoiceId": number, "PricingCurrency": currency,
            "SubAccountId": tenant_id, "SubAccountName": tenant_name,
            "Tags": json.dumps({"chargeback:organisation": organisation, "chargeback:business_unit": business_unit,
                                "chargeback:team": team}) if organisation else None,
            "x_ChargeId": f"correction/{number}/{line_no}", "x_ChargeSource": "correction",
            "x_InvoiceDiscountAmount": discount_amount, "x_InvoiceListAmount": list_amount,
            "x_InvoiceLineNo": line_no, "x_InvoiceLineType": line_type,
        })
        out.append(tuple(values.get(name) for name in names))
    return out


_ASCII_FORMS = str.maketrans({"\u2014": "-", "\u2013": "-", "\u2018": "'", "\u2019": "'", "\u201c": '"',
                              "\u201d": '"', "\u2026": "...", "\u00d7": "x", "\u00b7": "-", "\u00a0": " "})


def ascii_text(value: str) -> str:
    """focus-validator 2.2.1 accepts only ASCII in string columns: dashes and quotes become
    their ASCII forms, accents are dropped (``Société — prod`` -> ``Societe - prod``), anything
    else becomes ``?``."""
    if value.isascii():
        return value
    folded = unicodedata.normalize("NFKD", value.translate(_ASCII_FORMS))
    return "".join(c for c in folded if not unicodedata.combining(c)).encode("ascii", "replace").decode()


def _for_focus(columns: list[Column], row: tuple) -> tuple:
    """A row as FOCUS files carry it: ASCII text; JSON re-serialised with \\u escapes (lossless)."""
    out = []
    for column, value in zip(columns, row, strict=True):
        if isinstance(value, str):
            value = json.dumps(json.loads(value)) if column.kind == "json" else ascii_text(value)
        out.append(value)
    return tuple(out)


def decimal_text(value: Decimal) -> str:
    """Exact numeric text for FOCUS: no exponent, trailing zeros trimmed to two decimals
    (``Decimal("0.405000")`` -> ``0.405``, ``Decimal("12.50")`` -> ``12.50``, ``5`` -> ``5``)."""
    text = format(value, "f")
    whole, dot, frac = text.partition(".")
    if not dot:
        return whole
    trimmed = frac.rstrip("0")
    return f"{whole}.{trimmed.ljust(2, '0')}"


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return decimal_text(value)
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return str(value)


def write_csv(path: Path, columns: list[Column], rows: list[tuple]) -> None:
    """FOCUS CSV: a header of column ids, empty fields for nulls, UTF-8."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow([c.name for c in columns])
        for row in rows:
            writer.writerow([_cell(v) for v in row])


def _decimal_scale(values: list[Decimal | None], declared: int | None) -> int:
    """The smallest scale that holds every value exactly (at least the declared one)."""
    exponents = [v.normalize().as_tuple().exponent for v in values if v is not None and v != 0]
    return max([declared or 0, *(-e for e in exponents if isinstance(e, int))])


def write_parquet(path: Path, columns: list[Column], rows: list[tuple]) -> None:
    """FOCUS Parquet: decimal128 for numerics (exact, scale per column), UTC timestamps."""
    import pyarrow as pa  # optional dependency: raises ModuleNotFoundError without it
    import pyarrow.parquet as pq

    arrays = []
    for i, column in enumerate(columns):
        values = [row[i] for row in rows]
        if column.kind == "numeric":
            scale = _decimal_scale(values, column.scale)
            digits = max((len(v.quantize(Decimal(1).scaleb(-scale)).as_tuple().digits)
                          for v in values if v is not None), default=1)
            if digits > 38:
                raise FocusExportError(f"{column.name}: a value needs {digits} digits at scale {scale}, "
                                       "more than Parquet's decimal128 holds")
            quantum = Decimal(1).scaleb(-scale)
            arrays.append(pa.array([None if v is None else v.quantize(quantum) for v in values],
                                   pa.decimal128(38, scale)))
        elif column.kind == "timestamp":
            arrays.append(pa.array([None if v is None else v.astimezone(dt.UTC) for v in values],
                                   pa.timestamp("s", tz="UTC")))
        elif column.kind == "integer":
            arrays.append(pa.array(values, pa.int32()))
        else:
            arrays.append(pa.array([None if v is None else str(v) for v in values], pa.string()))
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_arrays(arrays, names=[c.name for c in columns]), path)


# --------------------------------------------------------------------------- validation


def validator_executable() -> Path:
    """``$CHARGEBACK_FOCUS_VALIDATOR``, else ``.venv-focus/bin/focus-validator`` of the checkout."""
    return Path(os.environ.get("CHARGEBACK_FOCUS_VALIDATOR") or _REPO / ".venv-focus" / "bin" / "focus-validator")


def _validator_package(executable: Path) -> Path:
    found = sorted(executable.resolve().parent.parent.glob("lib/python3*/site-packages/focus_validator"))
    if not found:
        raise FocusExportError(f"no focus_validator package next to {executable}: run `make focus-validator`")
    return found[-1]


def validate(path: str | os.PathLike[str], *, timeout: float = 900) -> ValidationReport:
    """Run focus-validator (FOCUS 1.2, bundled rules, downloads blocked) on a CSV or Parquet file."""
    path = Path(path).resolve()
    executable = validator_executable()
    if not executable.exists():
        raise FocusExportError(f"the FOCUS validator is not installed ({executable}): run `make focus-validator` "
                               "(it needs Python 3.12)")
    package = _validator_package(executable)
    command = (
        str(executable), "--data-file", str(path), "--validate-version", FOCUS_VERSION,
        "--block-download", "--rule-set-path", str(package / "rules"),
        "--applicability-criteria", ",".join(APPLICABILITY_CRITERIA), "--show-violations",
    )
    env = {**os.environ, "HTTP_PROXY": _NO_NETWORK, "HTTPS_PROXY": _NO_NETWORK, "http_proxy": _NO_NETWORK,
           "https_proxy": _NO_NETWORK, "NO_PROXY": "", "no_proxy": "", "PYTHONIOENCODING": "utf-8"}
    with tempfile.TemporaryDirectory(prefix="focus-validator-") as work:
        # the validator reads focus_validator/rules/currency_codes.csv relative to its working
        # directory and writes its debug log there: a scratch directory with a link serves both
        with contextlib.suppress(FileExistsError):
            os.symlink(package, Path(work) / "focus_validator")
        proc = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=timeout,
                              check=False)
    output = proc.stdout + proc.stderr
    totals = _TOTALS.search(proc.stdout)
    if proc.returncode != 0 or totals is None:
        raise FocusExportError(f"focus-validator did not finish on {path.name} (exit {proc.returncode}):\n"
                               + output[-4000:])
    total, passed, failed, skipped = (int(n) for n in totals.groups())
    statuses = dict(_RESULT.findall(proc.stdout))
    return ValidationReport(path, command, total, passed, failed, skipped, statuses, proc.stdout)
