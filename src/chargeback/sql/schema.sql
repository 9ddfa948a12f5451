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
    loaded_at timestamptz not null default now(),
    landed_hour timestamptz,
    learned_at timestamptz not null default now()
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
    source_line integer not null,
    landed_hour timestamptz,
    learned_at timestamptz
);
create index if not exists usage_staging_load_idx on raw.usage_staging (load_id);

-- ---- ingestion: landed hour, learned_at, quarantine, per-file accounting (docs/INGESTION.md) ----
-- Warehouses of the previous release: raw.usage_snapshots gains the landing folder hour a row
-- came from (publish replaces by it) and when Chargeback first learned of the snapshot.
-- Checked first: an unconditional `alter table` takes an exclusive lock on every ensure_schema().
do $$
begin
    if not exists (select 1 from information_schema.columns
                   where table_schema = 'raw' and table_name = 'usage_snapshots' and column_name = 'landed_hour') then
        alter table raw.usage_snapshots add column landed_hour timestamptz;
        update raw.usage_snapshots set landed_hour = date_trunc('hour', hour_start, 'UTC');
    end if;
    if not exists (select 1 from information_schema.columns
                   where table_schema = 'raw' and table_name = 'usage_snapshots' and column_name = 'learned_at') then
        alter table raw.usage_snapshots add column learned_at timestamptz;
        update raw.usage_snapshots set learned_at = loaded_at;
        alter table raw.usage_snapshots alter column learned_at set default now();
        alter table raw.usage_snapshots alter column learned_at set not null;
    end if;
    if not exists (select 1 from information_schema.columns
                   where table_schema = 'raw' and table_name = 'usage_staging' and column_name = 'landed_hour') then
        alter table raw.usage_staging add column landed_hour timestamptz;
        alter table raw.usage_staging add column learned_at timestamptz;
    end if;
end
$$;
create index if not exists usage_snapshots_landed_hour_idx on raw.usage_snapshots (landed_hour);

-- Rows of landed files that could not be loaded, one per row (or one per file rejected
-- whole: field 'file'), with why. `status`: open until a later load of the same landed hour
-- loads the row (replayed) or quarantines it again (superseded by that load's row).
create table if not exists raw.usage_quarantine (
    quarantine_id bigserial primary key,
    load_id bigint not null,
    source_file text not null,
    source_line integer,
    landed_hour timestamptz,
    field text not null,
    reason text not null,
    raw_record text,
    snapshot_id text,
    status text not null default 'open' check (status in ('open', 'replayed', 'superseded')),
    quarantined_at timestamptz not null default now(),
    resolved_at timestamptz
);
create index if not exists usage_quarantine_load_idx on raw.usage_quarantine (load_id);
create index if not exists usage_quarantine_open_idx on raw.usage_quarantine (landed_hour) where status = 'open';

-- Safe casts for the set-based parse: is this text a number / a timestamp? PostgreSQL 16+
-- answers with pg_input_is_valid (no exception, fast); PostgreSQL 15 catches the cast's error.
do $$
begin
    if current_setting('server_version_num')::int >= 160000 then
        execute $f$
            create or replace function raw.is_numeric(t text) returns boolean
            language sql stable parallel safe as 'select pg_input_is_valid(t, ''numeric'')'
        $f$;
        execute $f$
            create or replace function raw.is_timestamptz(t text) returns boolean
            language sql stable parallel safe as 'select pg_input_is_valid(t, ''timestamptz'')'
        $f$;
        execute $f$
            create or replace function raw.is_json(t text) returns boolean
            language sql stable parallel safe as 'select pg_input_is_valid(t, ''json'')'
        $f$;
    else
        execute $f$
            create or replace function raw.is_numeric(t text) returns boolean
            language plpgsql stable parallel safe as $b$
            begin
                perform t::numeric;
                return true;
            exception when others then
                return false;
            end
            $b$
        $f$;
        execute $f$
            create or replace function raw.is_timestamptz(t text) returns boolean
            language plpgsql stable parallel safe as $b$
            begin
                perform t::timestamptz;
                return true;
            exception when others then
                return false;
            end
            $b$
        $f$;
        execute $f$
            create or replace function raw.is_json(t text) returns boolean
            language plpgsql stable parallel safe as $b$
            begin
                perform t::json;
                return true;
            exception when others then
                return false;
            end
            $b$
        $f$;
    end if;
end
$$;

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
-- Tables whose shape changed since an earlier release are dropped here: they hold
-- nothing but the last applied configuration, which the next apply writes again.
do $$
begin
    if exists (select from information_schema.columns
               where table_schema = 'config' and table_name = 'cost_pools'
                 and column_name = 'method') then
        drop table config.cost_pools;
    end if;
    if exists (select from information_schema.columns
               where table_schema = 'config' and table_name = 'prices'
                 and column_name = 'unit_price') then
        drop table config.prices;
    end if;
end
$$;
-- Monthly contract terms per tenant; a month is billed on the terms in force on its first day.
create table if not exists config.tenant_terms (
    tenant_id text not null,
    valid_from date not null,
    valid_to date,
    discount_percent numeric(7, 4) not null default 0
        check (discount_percent >= 0 and discount_percent <= 100),
    monthly_commitment numeric(18, 2) not null default 0 check (monthly_commitment >= 0),
    overage_uplift_percent numeric(7, 4) not null default 0 check (overage_uplift_percent >= 0),
    retention_days integer not null default 30 check (retention_days > 0),
    primary key (tenant_id, valid_from)
);
-- One row per version of a cost pool (docs/COST_ENGINE.md).
create table if not exists config.cost_pools (
    pool text not null,
    valid_from date not null,
    valid_to date,
    description text not null,
    monthly_cost numeric(18, 2) not null check (monthly_cost >= 0),
    currency text not null,
    capacity_meter text,
    capacity_per_hour numeric(38, 12) check (capacity_per_hour > 0),
    idle_policy text not null default 'platform'
        check (idle_policy in ('platform', 'redistribute')),
    primary key (pool, valid_from)
);
-- The allocation rule of a pool version: one or more parts, each with a method.
create table if not exists config.allocation_rules (
    pool text not null,
    valid_from date not null,
    part integer not null check (part >= 1),
    share_percent numeric(7, 4) not null check (share_percent > 0 and share_percent <= 100),
    method text not null
        check (method in ('direct', 'proportional', 'even', 'fixed', 'activity_based')),
    primary key (pool, valid_from, part)
);
-- What a part is split over: driver meters, activities, active tenants or fixed shares.
create table if not exists config.allocation_components (
    pool text not null,
    valid_from date not null,
    part integer not null,
    component text not null,
    basis text not null check (basis in ('usage', 'active', 'fixed')),
    meter text,
    weight numeric(18, 6) not null check (weight > 0),
    primary key (pool, valid_from, part, component),
    check ((basis = 'usage') = (meter is not null))
);
-- Tenants' percentages of a `fixed` part, or the one tenant (100) of a `direct` part.
create table if not exists config.allocation_fixed_shares (
    pool text not null,
    valid_from date not null,
    part integer not null,
    tenant_id text not null,
    percent numeric(7, 4) not null check (percent > 0 and percent <= 100),
    primary key (pool, valid_from, part, tenant_id)
);
-- One row per price book version and meter: its pricing model.
create table if not exists config.prices (
    price_book text not null,
    valid_from date not null,
    valid_to date,
    currency text not null,
    meter text not null,
    pricing_model text not null
        check (pricing_model in ('per_unit', 'graduated', 'volume', 'package', 'retention')),
    free_allowance numeric(38, 12) not null default 0 check (free_allowance >= 0),
    package_size numeric(38, 12) check (package_size > 0),
    package_price numeric(18, 6) check (package_price >= 0),
    primary key (price_book, meter, valid_from),
    check ((pricing_model = 'package') = (package_size is not null and package_price is not null))
);
-- Tiers of a price: bounds in billable units (after the free allowance) of the month.
create table if not exists config.price_tiers (
    price_book text not null,
    valid_from date not null,
    meter text not null,
    tier integer not null check (tier >= 1),
    lower_bound numeric(38, 12) not null check (lower_bound >= 0),
    upper_bound numeric(38, 12),
    retention_days integer check (retention_days > 0),
    unit_price numeric(18, 6) not null check (unit_price >= 0),
    primary key (price_book, meter, valid_from, tier),
    check (upper_bound is null or upper_bound > lower_bound)
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
    finished_at timestamptz,
    rows_duplicate integer not null default 0,
    rows_quarantined integer not null default 0,
    files_rejected integer not null default 0
);
do $$
begin
    if not exists (select 1 from information_schema.columns
                   where table_schema = 'pipeline' and table_name = 'load_runs' and column_name = 'rows_duplicate') then
        alter table pipeline.load_runs add column rows_duplicate integer not null default 0;
        alter table pipeline.load_runs add column rows_quarantined integer not null default 0;
        alter table pipeline.load_runs add column files_rejected integer not null default 0;
    end if;
end
$$;
-- One row per landed file a load run read. Per file (and summed, per run):
-- rows_in = rows_loaded + rows_duplicate + rows_quarantined. first_seen_at: the first time
-- any load saw this file URL, i.e. when Chargeback learned of it (carried over from earlier rows).
create table if not exists pipeline.load_files (
    load_id bigint not null,
    file_url text not null,
    landed_hour timestamptz not null,
    bytes bigint not null default 0,
    rows_in integer not null default 0,
    rows_loaded integer not null default 0,
    rows_duplicate integer not null default 0,
    rows_quarantined integer not null default 0,
    status text not null check (status in ('loaded', 'rejected')),
    message text,
    first_seen_at timestamptz not null,
    primary key (load_id, file_url),
    check (rows_in = rows_loaded + rows_duplicate + rows_quarantined)
);
create index if not exists load_files_url_idx on pipeline.load_files (file_url);

-- What the user must know, one line each (chargeback.events): refusals, rejected files,
-- quarantine summaries, task and DAG failures. `line` is exactly what the log showed.
create table if not exists pipeline.events (
    event_id bigserial primary key,
    occurred_at timestamptz not null default now(),
    kind text not null
        check (kind in ('quarantine', 'rejected_file', 'refusal', 'task_failure', 'dag_failure', 'notice')),
    severity text not null check (severity in ('info', 'warning', 'error')),
    subject text not null,
    location text,
    reason text not null,
    action text,
    line text not null,
    dag_id text,
    task_id text,
    run_id text,
    try_number integer,
    details jsonb
);
create index if not exists events_occurred_idx on pipeline.events (occurred_at);

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
