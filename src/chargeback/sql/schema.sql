-- Chargeback's own tables. dbt owns the staging/intermediate/marts schemas;
-- this file owns what comes before dbt (raw, config) and the pipeline's records.
-- Idempotent: run by `chargeback.warehouse.ensure_schema()` before every stage.

create schema if not exists raw;
create schema if not exists config;
create schema if not exists pipeline;

-- Hourly usage snapshots as published after the gate passed. One row per snapshot.
create table if not exists raw.usage_snapshots (
    snapshot_id text primary key,
    tenant_id text not null,
    meter text not null,
    value numeric not null,
    unit text not null,
    hour_start timestamptz not null,
    emitted_at timestamptz not null,
    kind text not null,
    source_file text not null,
    source_line integer not null,
    load_id bigint not null,
    loaded_at timestamptz not null default now()
);
create index if not exists usage_snapshots_hour_idx on raw.usage_snapshots (hour_start);

-- Snapshots of one load run waiting for the gate. Same shape as raw.usage_snapshots;
-- the gate validates `where load_id = X`, then `publish` moves them in one transaction.
-- No constraints on purpose: the gate, not an insert error, reports bad rows.
create table if not exists raw.usage_staging (
    load_id bigint not null,
    snapshot_id text,
    tenant_id text,
    meter text,
    value numeric,
    unit text,
    hour_start timestamptz,
    emitted_at timestamptz,
    kind text,
    source_file text not null,
    source_line integer not null
);
create index if not exists usage_staging_load_idx on raw.usage_staging (load_id);

-- Reviewed configuration (config/*.yml), replaced whole by `chargeback.configuration.apply`.
create table if not exists config.tenants (
    tenant_id text primary key,
    tenant_name text not null,
    organisation text not null,
    business_unit text not null,
    team text not null,
    price_book text not null,
    billing_email text
);
create table if not exists config.meters (
    meter text primary key,
    unit text not null,
    kind text not null check (kind in ('counter', 'gauge')),
    description text not null
);
create table if not exists config.cost_pools (
    pool text not null,
    description text not null,
    monthly_cost numeric(18, 2) not null check (monthly_cost >= 0),
    currency text not null,
    valid_from date not null,
    valid_to date,
    method text not null,
    driver_meter text,
    primary key (pool, valid_from)
);
create table if not exists config.prices (
    price_book text not null,
    currency text not null,
    valid_from date not null,
    valid_to date,
    meter text not null,
    unit_price numeric(18, 6) not null check (unit_price >= 0),
    primary key (price_book, meter, valid_from)
);

-- One row per extract+load run of a window.
create table if not exists pipeline.load_runs (
    load_id bigserial primary key,
    source text not null,
    window_start timestamptz not null,
    window_end timestamptz not null,
    status text not null default 'staged',
    files integer not null default 0,
    rows_in integer not null default 0,
    rows_loaded integer not null default 0,
    message text,
    started_at timestamptz not null default now(),
    finished_at timestamptz
);

-- Every GX validation run, pass or fail, with its full result.
create table if not exists pipeline.validations (
    validation_id bigserial primary key,
    suite text not null,
    table_name text not null,
    load_id bigint,
    window_start timestamptz,
    window_end timestamptz,
    success boolean not null,
    evaluated_expectations integer not null,
    failed_expectations integer not null,
    summary text not null,
    result jsonb not null,
    validated_at timestamptz not null default now()
);

-- Invoice numbers are gapless per issuer: taken from this counter in the
-- same transaction that records the invoice (chargeback.invoices.render_month).
create table if not exists pipeline.invoice_counters (
    issuer text primary key,
    last_number bigint not null check (last_number >= 0)
);
-- One row per tenant and billing month. A re-render updates the row and keeps
-- its number; period_end is the last day of the period (inclusive).
create table if not exists pipeline.invoices (
    invoice_number text primary key,
    issuer text not null default 'chargeback',
    tenant_id text not null,
    period_start date not null,
    period_end date not null,
    issue_date date,
    currency text not null,
    total numeric(18, 2) not null,
    pdf_uri text not null,
    pdf_sha256 text not null,
    status text not null default 'draft',
    rendered_at timestamptz not null default now(),
    unique (tenant_id, period_start)
);
-- Warehouses created before these columns existed. Checked first: an unconditional
-- `alter table` would take an exclusive lock on every ensure_schema() call.
do $$
begin
    if not exists (select 1 from information_schema.columns
                   where table_schema = 'pipeline' and table_name = 'invoices' and column_name = 'issuer') then
        alter table pipeline.invoices add column issuer text not null default 'chargeback';
    end if;
    if not exists (select 1 from information_schema.columns
                   where table_schema = 'pipeline' and table_name = 'invoices' and column_name = 'issue_date') then
        alter table pipeline.invoices add column issue_date date;
    end if;
end
$$;

-- BI tools (Metabase, Superset, ...) read the documented marts through a read-only role.
-- Grant it to a login role of your own: `create role metabase login password '…' in role chargeback_bi`.
-- Where the warehouse user may not create roles, this is skipped with a notice.
create schema if not exists marts;
do $$
begin
    if not exists (select 1 from pg_roles where rolname = 'chargeback_bi') then
        create role chargeback_bi nologin;
    end if;
    grant usage on schema marts to chargeback_bi;
    grant select on all tables in schema marts to chargeback_bi;
    alter default privileges in schema marts grant select on tables to chargeback_bi;
exception when insufficient_privilege then
    raise notice 'chargeback_bi role not set up: %', sqlerrm;
end
$$;
