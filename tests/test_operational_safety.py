"""Operational safety (issue 10): no synthetic usage in production, no secrets in the
compose file, an invoice renderer that reads only its template and fonts, security floors
of the dependencies. Pure tier: nothing here reaches a warehouse."""

from __future__ import annotations

import datetime as dt
import io
import re
import shutil
import tomllib
from decimal import Decimal as D
from pathlib import Path

import pypdf
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from chargeback.billing import render
from chargeback.billing.document import Invoice, InvoiceError, InvoiceLine, Tenant
from chargeback.ingest import simulate as simulator
from chargeback.ingest.sources import SimulatorSource
from chargeback.orchestration import steps

ROOT = Path(__file__).resolve().parents[1]
HOUR = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


# --------------------------------------------------------------------------- the simulator


@pytest.fixture
def landing(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("CHARGEBACK_LANDING", str(tmp_path / "landing"))
    return tmp_path / "landing"


@pytest.mark.parametrize("env", [None, "production"])
def test_the_simulator_is_refused_outside_dev_and_demo(env, landing, monkeypatch, caplog):
    """``source=simulator`` (the DAG param, ``chargeback load --source``) and every direct
    simulation are refused in one line under production, the default; nothing is written."""
    if env is None:
        monkeypatch.delenv("CHARGEBACK_ENV", raising=False)
    else:
        monkeypatch.setenv("CHARGEBACK_ENV", env)
    said = "production (the default)" if env is None else "production"
    line = (f"chargeback refusal: simulated usage at {landing}: CHARGEBACK_ENV is {said}, and synthetic usage"
            " written to the landing location would be billed as real usage — load real snapshots (source"
            " 'files'); only a development or demo installation may simulate: set CHARGEBACK_ENV=dev or"
            " CHARGEBACK_ENV=demo there")

    with pytest.raises(simulator.SimulationRefused) as refused:
        steps.make_source("simulator")
    assert str(refused.value) == line
    with pytest.raises(simulator.SimulationRefused):
        simulator.simulate(str(landing), ["t001"], HOUR, HOUR + dt.timedelta(hours=1))
    assert not landing.exists()
    refusals = [r.getMessage() for r in caplog.records
                if r.name == "chargeback.platform.events" and r.levelname == "ERROR"]
    assert refusals == [line, line]
    assert type(steps.make_source("files")).__name__ == "FileSource"


@pytest.mark.parametrize("env", ["dev", "demo", "DEMO"])
def test_the_simulator_runs_in_dev_and_demo(env, landing, monkeypatch):
    monkeypatch.setenv("CHARGEBACK_ENV", env)
    assert isinstance(steps.make_source("simulator", tenants=2), SimulatorSource)
    assert simulator.simulate(str(landing), ["t001"], HOUR, HOUR + dt.timedelta(hours=1)) > 0


def test_an_unknown_environment_is_an_error_not_a_permission(landing, monkeypatch):
    monkeypatch.setenv("CHARGEBACK_ENV", "staging")
    with pytest.raises(ValueError, match="CHARGEBACK_ENV must be one of production, dev, demo, got 'staging'"):
        steps.make_source("simulator")


def test_the_makefile_sets_the_environment_for_the_demo_and_the_bench():
    makefile = (ROOT / "Makefile").read_text()
    assert "\tCHARGEBACK_ENV=demo $(VENV)/bin/chargeback demo\n" in makefile
    assert "\tCHARGEBACK_ENV=dev $(PY) -m chargeback.bench\n" in makefile


# --------------------------------------------------------------------------- docker-compose.yml

REFERENCE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(:?[-?+])?([^}]*)\}|(?<!\$)\$([A-Za-z_][A-Za-z0-9_]*)")
SECRET_KEY = re.compile(r"PASSWORD|SECRET|FERNET|TOKEN|_KEY$")


def _compose() -> tuple[str, dict]:
    text = (ROOT / "docker-compose.yml").read_text()
    return text, yaml.safe_load(text)


def _environments(compose: dict) -> list[tuple[str, str, str]]:
    """(service, variable, value) of every service's environment (anchors resolved by yaml)."""
    return [(name, key, str(value)) for name, service in compose["services"].items()
            for key, value in (service.get("environment") or {}).items()]


def _required(value: str) -> bool:
    """``value`` is exactly one ``${VAR:?message}``: compose refuses to start without VAR."""
    match = REFERENCE.fullmatch(value.strip())
    return bool(match and match.group(1) and match.group(2) == ":?" and match.group(3))


def test_compose_takes_every_secret_from_the_environment():
    text, compose = _compose()
    secrets = [(s, k, v) for s, k, v in _environments(compose) if SECRET_KEY.search(k)]
    assert {k for _, k, _ in secrets} >= {"POSTGRES_PASSWORD", "AIRFLOW__CORE__FERNET_KEY",
                                          "_AIRFLOW_WWW_USER_PASSWORD", "CHARGEBACK_PG_PASSWORD"}
    assert [(s, k, v) for s, k, v in secrets if not _required(v)] == []
    # a password inside a URL is a required reference too, never a literal (nor a default)
    masked = REFERENCE.sub(lambda m: "REQUIRED" if _required(m.group(0)) else "OPTIONAL", text)
    urls = re.findall(r"[a-z0-9+]+://[^\s'\"]+", masked)
    assert len(urls) >= 4
    for url in urls:
        userinfo = url.split("://", 1)[1].split("@", 1)[0] if "@" in url else ""
        if ":" in userinfo:
            assert userinfo.split(":", 1)[1] == "REQUIRED", url
    for _, key, value in _environments(compose):
        for match in REFERENCE.finditer(value):
            if SECRET_KEY.search(match.group(1) or match.group(4) or ""):
                assert match.group(2) == ":?", (key, value)
    assert "airflow:airflow" not in text
    assert "chargeback:chargeback" not in text


def test_compose_binds_the_databases_to_localhost_and_keys_airflow():
    _, compose = _compose()
    for name in ("warehouse", "postgres"):
        for port in compose["services"][name].get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
    env = {k: v for _, k, v in _environments(compose)}
    assert _required(env["AIRFLOW__CORE__FERNET_KEY"])
    assert _required(env["_AIRFLOW_WWW_USER_PASSWORD"])
    assert ":-" not in env["_AIRFLOW_WWW_USER_PASSWORD"]


def test_env_example_lists_every_variable_compose_reads():
    text, _ = _compose()
    used = {m.group(1) or m.group(4) for m in REFERENCE.finditer(text)}
    example = (ROOT / ".env.example").read_text()
    listed = set(re.findall(r"^([A-Za-z_][A-Za-z0-9_]*)=", example, re.M))
    assert used - listed == set()
    assert listed - used == set()
    assert "Fernet.generate_key()" in example
    assert ".env" in (ROOT / ".gitignore").read_text().split()


# --------------------------------------------------------------------------- the invoice renderer

TENANT = Tenant("t001", "Globex", "Globex", "Cloud", "risk", "enterprise", "finance@globex.example")
LINES = [InvoiceLine("ingested_gb", "Log data ingested", D("10"), "GB", D("0.420000"), D("4.20"),
                     "USD", "enterprise", "per_unit")]
INVOICE = Invoice("CB-2026-000001", "t001", dt.date(2026, 10, 1), dt.date(2026, 10, 31), dt.date(2026, 11, 2),
                  "USD", D("4.20"), "enterprise")


@pytest.fixture
def reports(tmp_path) -> Path:
    """The shipped reports/ (templates, fonts) with a rendered invoice in out/ and a secret beside it."""
    folder = tmp_path / "reports"
    for name in ("templates", "fonts"):
        shutil.copytree(ROOT / "reports" / name, folder / name)
    (folder / "out" / "2026-10").mkdir(parents=True)
    (folder / "out" / "2026-10" / "t002.pdf").write_bytes(b"%PDF- another tenant's invoice")
    (folder / "secret.css").write_text("body { color: red }")
    return folder


def test_the_renderer_reads_only_its_template_and_fonts(reports):
    fetcher = render.ReportsURLFetcher(reports)
    assert b"@font-face" in fetcher.fetch((reports / "templates" / "invoice.css").as_uri()).read()
    assert len(fetcher.fetch((reports / "fonts" / "DejaVuSans.ttf").as_uri()).read()) > 100_000
    for url in ("file:///etc/passwd", (reports / "out" / "2026-10" / "t002.pdf").as_uri(),
                (reports / "templates" / ".." / "out" / "2026-10" / "t002.pdf").as_uri(),
                (reports / "secret.css").as_uri(), "http://127.0.0.1:1/logo.png", "https://example.com/x.css"):
        with pytest.raises(render.URLRefusedError, match="refused"):
            fetcher.fetch(url)

    base = reports / "templates" / "invoice.html"
    for reference in ('<img src="file:///etc/passwd">', '<img src="../out/2026-10/t002.pdf">',
                      '<link rel="stylesheet" href="../secret.css">', '<img src="http://127.0.0.1:1/logo.png">'):
        html = f"<html><head></head><body><p>x</p>{reference}</body></html>"
        with pytest.raises(InvoiceError, match="refused"):
            render.html_to_pdf(html, reports_dir=reports, base_url=base)

    pdf = pypdf.PdfReader(io.BytesIO(render.render_invoice_pdf(INVOICE, LINES, TENANT, reports_dir=reports)))
    fonts = {str(font.get_object()["/BaseFont"]) for font in pdf.pages[0]["/Resources"]["/Font"].values()}
    assert {name.split("+")[1] for name in fonts} == {"Chargeback-Sans", "Chargeback-Sans-Bold"}  # shipped fonts
    assert "CB-2026-000001" in pdf.pages[0].extract_text()


# --------------------------------------------------------------------------- dependency floors


def test_security_floors_are_stated_and_locked():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    floors = {Requirement(r).name: Requirement(r).specifier for r in project["dependencies"]}
    assert str(floors["weasyprint"]) == ">=70"
    assert str(floors["jinja2"]) == ">=3.1.6"
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    locked = {p["name"]: Version(p["version"]) for p in lock["package"] if "version" in p}
    assert locked["weasyprint"] in floors["weasyprint"]
    assert locked["jinja2"] in floors["jinja2"]
