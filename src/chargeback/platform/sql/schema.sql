-- Chargeback's own tables. dbt owns the staging/intermediate/marts schemas;
-- this file owns what comes before dbt (raw, config) and the pipeline's records.
-- Idempotent: run by `chargeback.warehouse.ensure_schema()` before every stage.

create schema if not exists raw;
create schema if not exists config;
create schema if not exists pipeline;

-- Hourly usage snapshots as published after the gate passed. One row per snapshot.
create table if not exists raw.usage_snapshots (
    snapshot_id text not null,
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
    learned_at timestamptz not null default now(),
    source text not null default '(none)',
    labels jsonb not null default '{}',
    primary key (tenant_id, snapshot_id)
);
create index if not exists usage_snapshots_hour_idx on raw.usage_snapshots (hour_start);

-- Snapshots of one load run waiting for the gate. Same shape as raw.usage_snapshots;
-- the gate validates `where load_id = X`, then `publish` moves them in one transaction.
-- No constraints on purpose: the gate, not an insert error, reports bad rows.
-- Unlogged: staged rows are written once, not also to the WAL (the landed files stay, and a
-- load is repeatable). A crash empties the table; publish compares the staged rows with the
-- count stage recorded and refuses a load that lost any (chargeback.ingest.load.publish).
create unlogged table if not exists raw.usage_staging (
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
    learned_at timestamptz,
    source text,
    labels jsonb
);
create index if not exists usage_staging_load_idx on raw.usage_staging (load_id);
-- Warehouses of earlier releases: their staging table was logged (checked first: the alter
-- rewrites the table under an exclusive lock).
do $$
begin
    if (select relpersistence from pg_class where oid = 'raw.usage_staging'::regclass) = 'p' then
        alter table raw.usage_staging set unlogged;
    end if;
end $$;

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
-- Attribution below the tenant (docs/SNAPSHOTS.md): the source that produced a snapshot and its
-- labels. Warehouses of an earlier release: their rows had neither, i.e. source '(none)', no labels
-- (a column default fills them without rewriting the table). The key stays (tenant_id, snapshot_id).
do $$
begin
    if not exists (select 1 from information_schema.columns
                   where table_schema = 'raw' and table_name = 'usage_snapshots' and column_name = 'source') then
        alter table raw.usage_snapshots add column source text not null default '(none)',
                                        add column labels jsonb not null default '{}';
    end if;
    if not exists (select 1 from information_schema.columns
                   where table_schema = 'raw' and table_name = 'usage_staging' and column_name = 'source') then
        alter table raw.usage_staging add column source text, add column labels jsonb;
    end if;
end
$$;
-- Snapshot ids are unique per tenant (a producer cannot pre-empt another tenant's ids):
-- warehouses of an earlier release keyed raw.usage_snapshots on snapshot_id alone.
do $$
begin
    if exists (select from pg_constraint
               where conrelid = 'raw.usage_snapshots'::regclass and contype = 'p'
                 and conkey = array[(select attnum from pg_attribute
                                     where attrelid = 'raw.usage_snapshots'::regclass
                                       and attname = 'snapshot_id')]::int2[]) then
        alter table raw.usage_snapshots drop constraint usage_snapshots_pkey;
        alter table raw.usage_snapshots add primary key (tenant_id, snapshot_id);
    end if;
end
$$;

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
-- The tenant a quarantined row claims (as text, bounded) and the tenant whose prefix its
-- file is under: the gate's policy holds back producers per tenant (docs/INGESTION.md).
do $$
begin
    if not exists (select 1 from information_schema.columns
                   where table_schema = 'raw' and table_name = 'usage_quarantine' and column_name = 'tenant_id') then
        alter table raw.usage_quarantine add column tenant_id text;
    end if;
end
$$;
create index if not exists usage_quarantine_load_idx on raw.usage_quarantine (load_id);
create index if not exists usage_quarantine_open_idx on raw.usage_quarantine (landed_hour) where status = 'open';

-- Safe casts for the set-based parse: is this text a number / a timestamp / JSON? PostgreSQL 16+
-- answers with pg_input_is_valid (no exception, fast); PostgreSQL 15 catches the cast's error.
-- Created once (not replaced on every ensure_schema, which would churn the catalog).
do $$
declare
    type_name text;
begin
    if (select count(*) from pg_proc
        where pronamespace = 'raw'::regnamespace and proname in ('is_numeric', 'is_timestamptz', 'is_json')) = 3 then
        return;
    end if;
    foreach type_name in array array['numeric', 'timestamptz', 'json'] loop
        if current_setting('server_version_num')::int >= 160000 then
            execute format(
                'create or replace function raw.%I(t text) returns boolean'
                ' language sql stable parallel safe as %L',
                'is_' || type_name, format('select pg_input_is_valid(t, %L)', type_name));
        else
            execute format(
                'create or replace function raw.%I(t text) returns boolean'
                ' language plpgsql stable parallel safe as %L',
                'is_' || type_name,
                format('begin perform t::%s; return true; exception when others then return false; end',
                       type_name));
        end if;
    end loop;
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
-- Plausibility bounds per meter and a tenant's first day (docs/INGESTION.md): added to
-- warehouses of an earlier release, filled by the next configuration apply.
do $$
begin
    if not exists (select 1 from information_schema.columns
                   where table_schema = 'config' and table_name = 'meters' and column_name = 'max_per_snapshot') then
        alter table config.meters add column max_per_snapshot numeric not null default 1e9;
        alter table config.meters add column max_per_tenant_hour numeric not null default 1e10;
    end if;
    if not exists (select 1 from information_schema.columns
                   where table_schema = 'config' and table_name = 'tenants' and column_name = 'start_date') then
        alter table config.tenants add column start_date date;
    end if;
end
$$;
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
-- Sources a tenant keeps for another retention class than its terms' retention_days
-- (config/tenants.yml terms: source_retention_days), effective-dated with the terms.
create table if not exists config.tenant_source_retention (
    tenant_id text not null,
    valid_from date not null,
    source text not null,
    retention_days integer not null check (retention_days > 0),
    primary key (tenant_id, valid_from, source)
);
-- The label keys that count (config/attribution.yml): showback aggregates these; other keys are
-- kept in raw.usage_snapshots.labels but not aggregated, so cardinality stays bounded.
create table if not exists config.label_keys (
    label_key text primary key
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
-- Publish order (chargeback.ingest.load.publish): each publish numbers itself under the publish
-- lock (published_seq); a staged load remembers the newest publish its duplicate check saw
-- (checked_through_seq), so its own publish knows whether another one landed since.
create sequence if not exists pipeline.publish_seq;
do $$
begin
    if not exists (select 1 from information_schema.columns
                   where table_schema = 'pipeline' and table_name = 'load_runs' and column_name = 'published_seq') then
        alter table pipeline.load_runs add column published_seq bigint, add column checked_through_seq bigint;
    end if;
end
$$;
create index if not exists load_runs_published_seq_idx on pipeline.load_runs (published_seq);
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
do $$
begin
    if not exists (select 1 from information_schema.columns
                   where table_schema = 'pipeline' and table_name = 'load_files' and column_name = 'producer') then
        alter table pipeline.load_files add column producer text;
    end if;
end
$$;
-- Producers the gate's policy held back in a load (a tenant, or a shared file), for the landed
-- hours where they broke it: their rows of those hours were quarantined with the reason, their
-- published rows of those hours kept; everything else of the load published.
create table if not exists pipeline.load_holds (
    load_id bigint not null,
    holder text not null,
    holder_kind text not null check (holder_kind in ('tenant', 'file')),
    reason text not null,
    landed_hours timestamptz[] not null,
    held_at timestamptz not null default now(),
    primary key (load_id, holder_kind, holder)
);

-- ---- pipeline.transform_runs (faults: chargeback.freshness) --------------------------
-- Every dbt run over a window (null: everything), succeeded or failed, with the
-- failure lines. Written by chargeback.engine.transform.build and, for dbt runs it did not
-- start (the dbt tasks of usage_hourly, dbt by hand), by the on-run-end hook
-- (dbt_project/macros/transform_runs.sql). chargeback.freshness reads it before a
-- month is invoiced: a month whose marts are older than its usage is refused.
create table if not exists pipeline.transform_runs (
    transform_id bigserial primary key,
    window_start timestamptz,
    window_end timestamptz,
    selection text,
    status text not null check (status in ('succeeded', 'failed')),
    started_at timestamptz not null,
    finished_at timestamptz not null default now(),
    failures text[] not null default '{}',
    invoked_by text not null,
    check ((window_start is null) = (window_end is null))
);
create index if not exists transform_runs_window_idx on pipeline.transform_runs (window_start, window_end);
-- builds of the insight marts (or of everything), by start: freshness.insight_marts_current
-- looks for the first one after each build of the cost chain
create index if not exists transform_runs_insights_idx on pipeline.transform_runs (started_at)
    where selection = 'tag:insights' or selection is null;
-- ---- end pipeline.transform_runs ----------------------------------------------------

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
-- the run's Data Docs page (file:// or the configured site), for the dashboard's pipeline page
alter table pipeline.validations add column if not exists data_docs_url text;

-- ---- month close: invoices, credit and debit notes, their lines, the closes (chargeback.billing.close) ----
-- Invoice numbers are gapless per issuer: taken from this counter at finalization, in
-- the same transaction that makes the documents final (chargeback.billing.invoices.finalize_month).
-- Drafts take no number, so only issued documents consume numbers.
create table if not exists pipeline.invoice_counters (
    issuer text primary key,
    last_number bigint not null check (last_number >= 0)
);
-- Who may issue documents and how their numbers read (<prefix>-<year>-<sequence>): the owner's
-- to change (the pipeline reads it), so the pipeline cannot open a numbering series of its own.
create table if not exists pipeline.issuers (
    issuer text primary key,
    number_prefix text not null check (number_prefix ~ '^[A-Z0-9]{1,10}$')
);
insert into pipeline.issuers (issuer, number_prefix) values ('chargeback', 'CB') on conflict (issuer) do nothing;
-- Upgrade from the release where drafts were numbered (invoice_number was the primary key
-- and nothing was ever final): its rows are drafts the next run renders again, and the
-- numbers they held were never issued, so the counter starts again at zero. A warehouse
-- holding anything but drafts there is not that release: refuse rather than lose it.
do $$
begin
    if exists (select from information_schema.tables
               where table_schema = 'pipeline' and table_name = 'invoices')
       and not exists (select from information_schema.columns
                       where table_schema = 'pipeline' and table_name = 'invoices'
                         and column_name = 'document_id') then
        if exists (select from pipeline.invoices where status <> 'draft') then
            raise exception 'pipeline.invoices of an earlier release holds non-draft invoices: '
                'the upgrade keeps issued invoices and would have to drop these — '
                'move them aside (alter table pipeline.invoices rename to invoices_old) and rerun';
        end if;
        drop table pipeline.invoices;
        update pipeline.invoice_counters set last_number = 0;
    end if;
end
$$;
-- One row per document: a tenant's invoice for a billing month (one per tenant and month,
-- a draft until finalized), or a credit/debit note correcting a final invoice of that
-- month (`corrects`). `close_period`: the month whose close issued the document (an
-- invoice's own month; a note's later month, where FOCUS reports it). A final document
-- never changes (triggers below); its PDF's sha256 is `pdf_sha256`.
create table if not exists pipeline.invoices (
    document_id bigserial primary key,
    document_type text not null default 'invoice'
        check (document_type in ('invoice', 'credit_note', 'debit_note')),
    invoice_number text unique,
    issuer text not null default 'chargeback',
    tenant_id text not null,
    period_start date not null,
    period_end date not null,
    close_period date not null,
    corrects text references pipeline.invoices (invoice_number),
    issue_date date,
    currency text not null,
    total numeric(18, 2) not null,
    pdf_uri text not null,
    pdf_sha256 text not null,
    status text not null default 'draft' check (status in ('draft', 'final')),
    rendered_at timestamptz not null default now(),
    finalized_at timestamptz,
    usage_as_of timestamptz,
    check ((status = 'final') = (invoice_number is not null)),
    check ((document_type = 'invoice') = (corrects is null)),
    check (status = 'draft' or (finalized_at is not null and issue_date is not null and usage_as_of is not null))
);
create unique index if not exists invoices_one_per_tenant_month
    on pipeline.invoices (tenant_id, period_start) where document_type = 'invoice';
create index if not exists invoices_corrects_idx on pipeline.invoices (corrects);
-- The lines a final document shows, frozen at finalization: what was issued, whatever
-- the marts say later. A note's lines are the differences it corrects.
create table if not exists pipeline.invoice_lines (
    document_id bigint not null references pipeline.invoices (document_id),
    line_no integer not null check (line_no >= 1),
    line_type text not null,
    meter text,
    description text not null,
    tier integer,
    quantity numeric(38, 12) not null,
    unit text,
    pricing_quantity numeric(38, 12) not null,
    pricing_unit text,
    unit_price numeric(18, 6),
    list_amount numeric(18, 2) not null,
    discount_amount numeric(18, 2) not null,
    amount numeric(18, 2) not null,
    currency text not null,
    price_book text,
    pricing_model text,
    primary key (document_id, line_no)
);
-- The price book version that priced a line (null on contract lines, notes, and lines frozen
-- before issue 11): frozen with it and embedded in the issued PDF (billing/attachment.py).
alter table pipeline.invoice_lines add column if not exists price_valid_from date;
-- One row per billing month that a close looked at: the completeness check's outcome
-- (missing hours per meter), an operator's override (reason, who) and when it was finalized.
create table if not exists pipeline.month_closes (
    period date primary key,
    status text not null check (status in ('incomplete', 'complete', 'overridden')),
    checked_at timestamptz not null,
    missing jsonb not null default '{}'::jsonb,
    missing_hours integer not null default 0 check (missing_hours >= 0),
    override_reason text,
    override_by text,
    finalized_at timestamptz,
    check ((status = 'overridden') = (override_reason is not null)),
    check ((override_reason is null) = (override_by is null))
);
-- Issuing runs (chargeback.billing.issuing): a month's final invoices issued in three steps so
-- that rendering can fan out over workers. The plan reserves the issuer's next numbers (the
-- counter itself moves only as each document is issued) and holds each document to render;
-- while a run is open no other document of its issuer is issued (store.lock_issuer refuses),
-- so the reserved numbers stay the next ones. A run ends issued, or abandoned when its month is
-- planned again; its documents' rows go with it (the issued ones live on in pipeline.invoices).
create table if not exists pipeline.invoice_runs (
    run_id bigserial primary key,
    issuer text not null,
    period_start date not null,
    first_number bigint not null check (first_number > 0),
    documents integer not null check (documents > 0),
    batches integer not null check (batches > 0),
    usage_as_of timestamptz not null,
    status text not null default 'open' check (status in ('open', 'issued', 'abandoned')),
    planned_at timestamptz not null default now(),
    ended_at timestamptz,
    check ((status = 'open') = (ended_at is null))
);
create unique index if not exists invoice_runs_one_open_per_issuer on pipeline.invoice_runs (issuer)
where status = 'open';
create table if not exists pipeline.invoice_run_documents (
    run_id bigint not null references pipeline.invoice_runs (run_id) on delete cascade,
    invoice_number text not null,
    position integer not null check (position >= 0),  -- issuing order (numbers outgrow their padding)
    batch integer not null check (batch >= 0),
    tenant_id text not null,
    job jsonb not null,
    staged_uri text,
    pdf_sha256 text,
    rendered_at timestamptz,
    primary key (run_id, invoice_number),
    check ((staged_uri is null) = (pdf_sha256 is null))
);
-- Final documents are immutable: the database itself refuses to change or remove them
-- or their lines, whoever asks while the triggers are enabled — and only the owner can
-- disable them, which ensure_schema() undoes (below). The pipeline role cannot even ask for
-- most of it: it lacks the privileges (see "roles and privileges" below). A correction is a
-- new document (a credit or debit note). search_path is pinned: a caller's own operators or
-- functions cannot change what the checks mean.
create or replace function pipeline.refuse_change_of_final_invoice() returns trigger
language plpgsql set search_path = pg_catalog, pg_temp as $$
begin
    if tg_op = 'TRUNCATE' then
        if exists (select from pipeline.invoices where status = 'final') then
            raise exception 'chargeback refusal: TRUNCATE of pipeline.invoices refused: it holds final documents, '
                'which are immutable — correct an issued invoice with a credit or debit note';
        end if;
        return null;
    end if;
    if old.status = 'final' then
        raise exception 'chargeback refusal: % of final % % (tenant %, %) refused: issued documents are immutable — '
            'correct it with a credit or debit note (chargeback close)', tg_op,
            replace(old.document_type, '_', ' '), old.invoice_number, old.tenant_id,
            to_char(old.period_start, 'YYYY-MM');
    end if;
    if tg_op = 'DELETE' then
        return old;
    end if;
    return new;
end
$$;
create or replace function pipeline.refuse_change_of_final_invoice_lines() returns trigger
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
    number text;
begin
    if tg_op = 'TRUNCATE' then
        if exists (select from pipeline.invoice_lines l join pipeline.invoices i using (document_id)
                   where i.status = 'final') then
            raise exception 'chargeback refusal: TRUNCATE of pipeline.invoice_lines refused: it holds lines of '
                'final documents, which are immutable — correct an issued invoice with a credit or debit note';
        end if;
        return null;
    end if;
    if tg_op in ('UPDATE', 'DELETE') then
        select invoice_number into number from pipeline.invoices
        where document_id = old.document_id and status = 'final';
    end if;
    if number is null and tg_op in ('INSERT', 'UPDATE') then
        select invoice_number into number from pipeline.invoices
        where document_id = new.document_id and status = 'final';
    end if;
    if number is not null then
        raise exception 'chargeback refusal: % of a line of final document % refused: issued documents are '
            'immutable — correct it with a credit or debit note (chargeback close)', tg_op, number;
    end if;
    if tg_op = 'DELETE' then
        return old;
    end if;
    return new;
end
$$;
-- Every protective trigger must exist on its table, call its function, fire on its events and
-- be enabled (an owner may have run ALTER TABLE ... DISABLE TRIGGER): one that is not is
-- created again, with a notice. Checked first: create trigger locks the table.
-- pipeline.unsound_triggers() lists those that are not; a pipeline process without the owner's
-- credentials calls it to refuse to run on a warehouse whose protection was undone.
create or replace function pipeline.unsound_triggers()
returns table (name text, tbl text, events text, level text, fn text, present boolean)
language sql stable set search_path = pg_catalog, pg_temp as $$
    select v.name, v.tbl, v.events, v.level, v.fn,
           exists (select from pg_trigger where tgrelid = v.tbl::regclass and tgname = v.name)
    from (values
        ('invoices_final_is_immutable', 'pipeline.invoices', 27, 'before update or delete', 'row',
         'pipeline.refuse_change_of_final_invoice'),
        ('invoices_final_no_truncate', 'pipeline.invoices', 34, 'before truncate', 'statement',
         'pipeline.refuse_change_of_final_invoice'),
        ('invoice_lines_final_are_immutable', 'pipeline.invoice_lines', 31, 'before insert or update or delete',
         'row', 'pipeline.refuse_change_of_final_invoice_lines'),
        ('invoice_lines_final_no_truncate', 'pipeline.invoice_lines', 34, 'before truncate', 'statement',
         'pipeline.refuse_change_of_final_invoice_lines')
    ) as v (name, tbl, tgtype, events, level, fn)
    where not exists (
        select from pg_trigger
        where tgrelid = v.tbl::regclass and tgname = v.name and tgtype = v.tgtype
          and tgfoid = v.fn::regproc and tgenabled in ('O', 'A') and tgqual is null
          and tgattr::text = '' and tgnargs = 0)
$$;
do $$
declare
    t record;
begin
    for t in select * from pipeline.unsound_triggers() loop
        if t.present then
            raise notice 'chargeback: trigger % on % was disabled or changed: created again', t.name, t.tbl;
            execute format('drop trigger %I on %s', t.name, t.tbl);
        end if;
        execute format('create trigger %I %s on %s for each %s execute function %s()',
                       t.name, t.events, t.tbl, t.level, t.fn);
    end loop;
end
$$;
-- The release of this file last applied (its sha256, written by ensure_schema): a pipeline
-- process without the owner's credentials refuses to run on another.
create table if not exists pipeline.schema_version (
    singleton boolean primary key default true check (singleton),
    sha256 text not null,
    applied_at timestamptz not null default now()
);
-- The only ways the pipeline role takes a number or makes a document final: functions owned
-- by the owner (security definer, search_path pinned, every name qualified). The counter only
-- ever advances by one, for the document being issued, so numbering cannot be reset.
-- Lock the issuer's counter row for the caller's transaction (created at 0 for a new issuer).
create or replace function pipeline.lock_issuer(p_issuer text) returns bigint
language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
declare
    v_last bigint;
begin
    if not exists (select from pipeline.issuers as r where r.issuer = p_issuer) then
        raise exception 'chargeback refusal: issuer % is not registered in pipeline.issuers (the owner registers issuers)',
            p_issuer;
    end if;
    insert into pipeline.invoice_counters as c (issuer, last_number) values (p_issuer, 0)
    on conflict (issuer) do nothing;
    select c.last_number into v_last from pipeline.invoice_counters as c where c.issuer = p_issuer for update;
    return v_last;
end
$$;
-- Issue a draft: the issuer's next number (p_invoice_number must end in it), final, now.
create or replace function pipeline.issue_document(
    p_document_id bigint, p_invoice_number text, p_usage_as_of timestamptz
) returns void
language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
declare
    v_issuer text;
    v_status text;
    v_number text;
    v_next bigint;
    v_year integer;
    v_expected text;
begin
    select i.issuer, i.status, i.invoice_number, extract(year from i.period_start)::integer
    into v_issuer, v_status, v_number, v_year
    from pipeline.invoices as i where i.document_id = p_document_id for update;
    if v_status is null then
        raise exception 'chargeback refusal: issuing document % refused: there is no such document', p_document_id;
    end if;
    if v_status <> 'draft' then
        raise exception 'chargeback refusal: issuing document % refused: it is issued already as %',
            p_document_id, v_number;
    end if;
    update pipeline.invoice_counters as c set last_number = c.last_number + 1
    where c.issuer = v_issuer returning c.last_number into v_next;
    if v_next is null then
        raise exception 'chargeback refusal: issuing document % refused: issuer % has no counter (lock_issuer first)',
            p_document_id, v_issuer;
    end if;
    select r.number_prefix || '-' || v_year || '-'
           || case when length(v_next::text) >= 6 then v_next::text else lpad(v_next::text, 6, '0') end
    into v_expected
    from pipeline.issuers as r where r.issuer = v_issuer;
    if p_invoice_number is distinct from v_expected then
        raise exception 'chargeback refusal: number % for document % refused: the next number of issuer % is %',
            p_invoice_number, p_document_id, v_issuer, coalesce(v_expected, v_next || ' (issuer not registered)');
    end if;
    update pipeline.invoices as i
    set invoice_number = p_invoice_number, status = 'final', finalized_at = pg_catalog.now(),
        usage_as_of = p_usage_as_of
    where i.document_id = p_document_id;
end
$$;
-- ---- end of month close ----

-- ANALYZE needs the owner (PostgreSQL 15 has no MAINTAIN privilege): the loader asks through this.
create or replace function raw.analyze_usage(p_table text) returns void
language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
begin
    if p_table = 'usage_staging' then
        -- the columns the gate and publish join, group and filter on: a third of the time of all
        analyze raw.usage_staging (load_id, tenant_id, snapshot_id, meter, hour_start, landed_hour, source_file);
    elsif p_table = 'usage_snapshots' then
        analyze raw.usage_snapshots;
    else
        raise exception 'chargeback: raw.analyze_usage analyzes usage_staging or usage_snapshots, not %', p_table;
    end if;
end
$$;

-- ---- budgets and budget alerts (chargeback.insights.budgets, docs/INSIGHTS.md "Budgets and alerts") ----
-- config/budgets.yml as last applied by `chargeback budgets check`: one row per budget version,
-- the file's defaults filled in. Thresholds are percentages of the amount; pace is in points.
create table if not exists config.budgets (
    budget_id text not null,
    valid_from date not null,
    valid_to date,
    description text,
    scope_level text not null
        check (scope_level in ('organisation', 'business_unit', 'team', 'tenant', 'source', 'label')),
    scope_key text not null,
    organisation text,
    business_unit text,
    team text,
    tenant_id text,
    source text,
    label_key text,
    label_value text,
    ledger text not null check (ledger in ('billed', 'cost')),
    amount numeric(18, 2) not null check (amount > 0),
    currency text not null,
    actual_thresholds numeric[] not null,
    forecast_thresholds numeric[] not null,
    pace_points numeric,
    email_to text[],
    webhook text,
    primary key (budget_id, valid_from)
);
create schema if not exists insights;
-- A threshold fired: once per budget, threshold and month (the unique key), whatever replays
-- and restatements do later. The figures are those of the evaluation that fired it. The row is
-- committed (with its line in pipeline.events) before anything is sent; `channels_pending` are
-- the channels not yet reached, retried by later evaluations until `delivered_at` is set.
create table if not exists insights.budget_alerts (
    alert_id bigserial primary key,
    budget_id text not null,
    month date not null,
    threshold text not null,
    threshold_kind text not null check (threshold_kind in ('actual', 'forecast', 'pace')),
    threshold_value numeric not null,
    scope_level text not null,
    scope_key text not null,
    ledger text not null,
    budget_amount numeric(18, 2) not null,
    currency text not null,
    actual numeric(18, 2) not null,
    used_percent numeric(12, 2) not null,
    elapsed_percent numeric(5, 2) not null,
    forecast_p50 numeric(18, 2),
    forecast_as_of timestamptz,
    breach_date date,
    contributors jsonb not null default '[]',
    usage_through timestamptz not null,
    fired_at timestamptz not null default now(),
    line text not null,
    channels_pending text[] not null default '{}',
    delivery_attempts integer not null default 0,
    last_error text,
    delivered_at timestamptz,
    unique (budget_id, threshold, month)
);
create index if not exists budget_alerts_undelivered_idx on insights.budget_alerts (month) where delivered_at is null;
-- Each budget's state for a month as of its last evaluation (replaced by every evaluation).
create table if not exists insights.budget_status (
    budget_id text not null,
    month date not null,
    valid_from date not null,
    scope_level text not null,
    scope_key text not null,
    ledger text not null,
    budget_amount numeric(18, 2) not null,
    currency text not null,
    state text not null check (state in ('ok', 'at_risk', 'over', 'no_data', 'not_measurable')),
    actual numeric(18, 2),
    used_percent numeric(12, 2),
    elapsed_percent numeric(5, 2),
    forecast_p50 numeric(18, 2),
    forecast_state text not null,
    forecast_as_of timestamptz,
    breach_date date,
    contributors jsonb not null default '[]',
    usage_through timestamptz,
    note text,
    evaluated_at timestamptz not null default now(),
    primary key (budget_id, month)
);
-- ---- end of budgets ----

-- ---- the insights DAG's queue (chargeback.orchestration.insights, docs/INSIGHTS.md "Orchestration") ----
-- One row per change of the usage marts the insights DAG was told of (an asset event, or a manual
-- run): the window of usage hours usage_hourly rebuilt. A run takes every request not yet done, so
-- a run skipped by the once-an-hour rule loses nothing: the next run takes its requests too.
create table if not exists pipeline.insights_requests (
    request_id bigserial primary key,
    window_start timestamptz not null,
    window_end timestamptz not null,
    requested_at timestamptz not null default now(),
    taken_at timestamptz,
    done_at timestamptz,
    check (window_start < window_end)
);
create index if not exists insights_requests_pending_idx on pipeline.insights_requests (requested_at)
    where done_at is null;

-- ---- forecasts (chargeback.insights.forecast, docs/INSIGHTS.md "Forecasts") ----
-- Month-end forecasts per tenant x meter ('(all)': the tenant's priced total with its contract
-- terms; on the cost ledger also '(shared)') and ledger, one set per usage-through instant
-- (as_of); a run for the same month and as_of replaces its rows.
create schema if not exists insights;
create table if not exists insights.forecasts (
    forecast_month date not null,
    as_of timestamptz not null,
    tenant_id text not null,
    meter text not null,
    ledger text not null check (ledger in ('billed', 'cost')),
    method text not null,
    history_days integer not null,
    status text not null check (status in ('ok', 'too_early')),
    usage_p10 numeric(38, 12),
    usage_p50 numeric(38, 12),
    usage_p90 numeric(38, 12),
    amount_p10 numeric(18, 2),
    amount_p50 numeric(18, 2),
    amount_p90 numeric(18, 2),
    actual_to_date numeric(18, 2),
    currency text,
    computed_at timestamptz not null default now(),
    primary key (forecast_month, as_of, tenant_id, meter, ledger),
    check (usage_p10 <= usage_p50 and usage_p50 <= usage_p90),
    check (amount_p10 <= amount_p50 and amount_p50 <= amount_p90)
);
-- ---- end of forecasts ----

-- ---- anomalies (chargeback.insights.anomalies, docs/INSIGHTS.md "Anomalies") ----
-- An episode: consecutive days on which a series (tenant x meter x ledger, or one of the tenant's
-- biggest sources of the meter: source; '(all)' for the meter as a whole) was out of line in
-- the same direction. It is raised once (its first day), explained (volume + rate + mix = change,
-- to the cent), recorded with its line in pipeline.events, then sent; later days extend it. Its
-- figures are those of its first day; anomaly_days holds every day's. Acknowledging or resolving
-- records who and why; no row is ever deleted, so a replay or restatement never raises it again.
create table if not exists insights.anomalies (
    anomaly_id bigserial primary key,
    tenant_id text not null,
    meter text not null,
    ledger text not null check (ledger in ('billed', 'cost')),
    source text not null default '(all)',
    direction text not null check (direction in ('spike', 'drop')),
    first_day date not null,
    last_day date not null,
    currency text not null,
    expected numeric(18, 2) not null,
    actual numeric(18, 2) not null,
    volume numeric(18, 2) not null,
    rate numeric(18, 2) not null,
    mix numeric(18, 2) not null,
    largest_effect text not null check (largest_effect in ('volume', 'rate', 'mix')),
    z double precision not null,
    may_be_missing_data boolean not null,
    contributors jsonb not null default '[]',
    price_versions jsonb not null default '[]',
    sentence text not null,
    usage_through timestamptz not null,
    detected_at timestamptz not null default now(),
    status text not null default 'open' check (status in ('open', 'acknowledged', 'resolved')),
    ack_kind text check (ack_kind in ('expected', 'planned', 'problem')),
    ack_by text,
    ack_reason text,
    ack_at timestamptz,
    resolved_by text,
    resolved_reason text,
    resolved_at timestamptz,
    line text not null,
    channels_pending text[] not null default '{}',
    delivery_attempts integer not null default 0,
    last_error text,
    delivered_at timestamptz,
    check (first_day <= last_day),
    check (volume + rate + mix = actual - expected),
    check (status <> 'acknowledged' or (ack_kind is not null and ack_by is not null and ack_reason is not null)),
    check (status <> 'resolved' or (resolved_by is not null and resolved_at is not null))
);
create index if not exists anomalies_series_idx on insights.anomalies (tenant_id, meter, ledger, source, last_day);
create index if not exists anomalies_undelivered_idx on insights.anomalies (anomaly_id) where delivered_at is null;
create table if not exists insights.anomaly_days (
    anomaly_id bigint not null references insights.anomalies,
    tenant_id text not null,
    meter text not null,
    ledger text not null,
    source text not null default '(all)',
    anomaly_day date not null,
    expected numeric(18, 2) not null,
    actual numeric(18, 2) not null,
    volume numeric(18, 2) not null,
    rate numeric(18, 2) not null,
    mix numeric(18, 2) not null,
    z double precision not null,
    detected_at timestamptz not null default now(),
    primary key (tenant_id, meter, ledger, source, anomaly_day),
    check (volume + rate + mix = actual - expected)
);
-- ---- end of anomalies ----

-- ---- recommendations (chargeback.insights.recommend, docs/INSIGHTS.md "Recommendations") ----
-- One row per period, tenant, kind and target (a source, or '(tenant)'): a later run updates the
-- figures and keeps the status; one that no longer applies is `current = false`. The saving is
-- the period's invoice re-priced with `change` (chargeback whatif --set), less the invoice.
create table if not exists insights.recommendations (
    recommendation_id bigserial primary key,
    period date not null,
    tenant_id text not null,
    kind text not null
        check (kind in ('retention', 'noisy_source', 'expensive_query', 'commitment', 'price_fit')),
    target text not null,
    change text not null,
    title text not null,
    evidence text not null,
    confidence text not null check (confidence in ('high', 'medium', 'low')),
    currency text not null,
    invoice_total numeric(18, 2) not null,
    total_after numeric(18, 2) not null,
    saving numeric(18, 2) not null,
    current boolean not null default true,
    computed_at timestamptz not null default now(),
    status text not null default 'open' check (status in ('open', 'accepted', 'dismissed')),
    status_by text,
    status_reason text,
    status_at timestamptz,
    unique (period, tenant_id, kind, target),
    check (saving = invoice_total - total_after),
    check (status = 'open' or (status_by is not null and status_reason is not null))
);
-- ---- end of recommendations ----

-- ---- roles and privileges (docs/WAREHOUSE.md, "Who can do what") ----
-- This file runs as the owner; everything else connects as the pipeline role, named by
-- ensure_schema() in the setting chargeback.pipeline_role. One role serves every Chargeback
-- database of a server (roles are cluster-wide); each database grants it its own privileges.
-- The pipeline owns dbt's schemas (derived, rebuildable) and nothing else; on the owner's
-- tables it may write what its stages write, and on the invoices only drafts.
do $$
declare
    pipeline_role text := current_setting('chargeback.pipeline_role', true);
    role_oid oid;
    dbt_schema text;
    r record;
begin
    if coalesce(pipeline_role, '') = '' then
        raise exception 'chargeback: schema.sql runs through chargeback.platform.warehouse.ensure_schema(), '
            'which names the pipeline role';
    end if;
    select oid into role_oid from pg_roles where rolname = pipeline_role;
    if role_oid is null then
        raise exception 'chargeback: the pipeline role % does not exist (ensure_schema creates it)', pipeline_role;
    end if;
    if not pg_has_role(current_user, role_oid, 'MEMBER') then  -- a non-superuser owner hands objects to it
        execute format('grant %I to %I', pipeline_role, current_user);
    end if;
    if not has_database_privilege(role_oid, current_database(), 'CREATE') then
        execute format('grant connect, temporary, create on database %I to %I', current_database(), pipeline_role);
    end if;
    foreach dbt_schema in array array['staging', 'intermediate', 'marts'] loop
        execute format('create schema if not exists %I', dbt_schema);
        if (select nspowner from pg_namespace where nspname = dbt_schema) <> role_oid then
            execute format('alter schema %I owner to %I', dbt_schema, pipeline_role);
        end if;
    end loop;
    for r in  -- what an earlier release's dbt built as the owner
        select n.nspname, c.relname, case c.relkind when 'v' then 'view' when 'm' then 'materialized view'
                                     else 'table' end as kind
        from pg_class as c join pg_namespace as n on n.oid = c.relnamespace
        where n.nspname in ('staging', 'intermediate', 'marts') and c.relkind in ('r', 'p', 'v', 'm')
          and c.relowner <> role_oid
    loop
        execute format('alter %s %I.%I owner to %I', r.kind, r.nspname, r.relname, pipeline_role);
    end loop;
    execute format('revoke create on schema raw, config, pipeline from %I', pipeline_role);
    execute format('grant usage on schema raw, config, pipeline to %I', pipeline_role);
    execute format('grant select, insert, update, delete, truncate on raw.usage_snapshots, raw.usage_staging,'
                   ' raw.usage_quarantine to %I', pipeline_role);
    execute format('grant select, insert, update, delete on all tables in schema config to %I', pipeline_role);
    execute format('grant select, insert, update, delete, truncate on pipeline.load_runs, pipeline.load_files, pipeline.load_holds,'
                   ' pipeline.transform_runs, pipeline.events, pipeline.validations, pipeline.month_closes,'
                   ' pipeline.insights_requests, pipeline.invoice_runs, pipeline.invoice_run_documents to %I',
                   pipeline_role);
    execute format('grant usage on all sequences in schema raw, pipeline to %I', pipeline_role);
    -- budgets: alerts are history (no delete: a replay must not send again); status is replaced
    execute format('grant usage on schema insights to %I', pipeline_role);
    execute format('grant select, insert on insights.budget_alerts to %I', pipeline_role);
    execute format('grant update (channels_pending, delivery_attempts, last_error, delivered_at)'
                   ' on insights.budget_alerts to %I', pipeline_role);
    execute format('grant select, insert, update, delete on insights.budget_status to %I', pipeline_role);
    execute format('grant usage on sequence insights.budget_alerts_alert_id_seq to %I', pipeline_role);
    execute format('grant select, insert, update, delete on insights.forecasts to %I', pipeline_role);
    -- anomalies: history too (no delete); the lifecycle and delivery columns change
    execute format('grant select, insert on insights.anomalies, insights.anomaly_days to %I', pipeline_role);
    execute format('grant update (last_day, status, ack_kind, ack_by, ack_reason, ack_at, resolved_by,'
                   ' resolved_reason, resolved_at, channels_pending, delivery_attempts, last_error, delivered_at)'
                   ' on insights.anomalies to %I', pipeline_role);
    execute format('grant update (expected, actual, volume, rate, mix, z) on insights.anomaly_days to %I',
                   pipeline_role);
    execute format('grant usage on sequence insights.anomalies_anomaly_id_seq to %I', pipeline_role);
    execute format('grant select, insert, update on insights.recommendations to %I', pipeline_role);
    execute format('grant usage on sequence insights.recommendations_recommendation_id_seq to %I', pipeline_role);
    -- Invoices: drafts only. No insert of status, number or finalization columns (a row it
    -- inserts is a draft), no update of them, no truncate; lines: insert only (the triggers
    -- refuse a line of a final document); the counter: read only.
    execute format('revoke all on pipeline.invoices, pipeline.invoice_lines, pipeline.invoice_counters from %I',
                   pipeline_role);
    execute format('grant select, delete on pipeline.invoices to %I', pipeline_role);
    execute format('grant insert (document_type, issuer, tenant_id, period_start, period_end, close_period, corrects,'
                   ' issue_date, currency, total, pdf_uri, pdf_sha256) on pipeline.invoices to %I', pipeline_role);
    execute format('grant update (period_end, issue_date, currency, total, pdf_uri, pdf_sha256, rendered_at)'
                   ' on pipeline.invoices to %I', pipeline_role);
    execute format('grant select, insert on pipeline.invoice_lines to %I', pipeline_role);
    execute format('grant select on pipeline.invoice_counters, pipeline.issuers, pipeline.schema_version to %I',
                   pipeline_role);
    revoke execute on function pipeline.lock_issuer(text), pipeline.issue_document(bigint, text, timestamptz),
        raw.analyze_usage(text) from public;
    execute format('grant execute on function pipeline.lock_issuer(text),'
                   ' pipeline.issue_document(bigint, text, timestamptz), raw.analyze_usage(text) to %I',
                   pipeline_role);
end
$$;
-- ---- end of roles and privileges ----


-- ---- readers: the dashboard, BI tools and psql, scoped by row-level security (docs/ACCESS.md) ----
-- Every reader is a database role in `chargeback_bi` (read-only). What rows it sees is decided
-- here, by the database: access.scopes says which tenants a role may see (all, an
-- organisation, business unit, team or tenant), and every table readers can select from has
-- FORCE ROW LEVEL SECURITY with a policy reading it; views over those tables are
-- security_invoker, so the table's policy applies to the reader, never to the view's owner.
-- `chargeback users add` (a dashboard user: a NOLOGIN role the dashboard's login may SET ROLE
-- to) and `chargeback bi grant` (a LOGIN role for Metabase, Superset or psql) write the scopes.
-- Personal data (access.personal_columns: dim_tenants.billing_email) is readable by
-- `chargeback_personal` only (dashboard finance users; BI logins granted --personal-data). Pipeline
-- health is `chargeback_engineer`'s and `chargeback_finance`'s, and only for roles that see all
-- tenants. Readers have no TEMP and no CREATE anywhere; their login roles get
-- statement and idle-in-transaction timeouts. The one write a reader may make: a dashboard user
-- (`chargeback_reviewer`) acknowledges an anomaly or accepts/dismisses a recommendation of its
-- scope, in its own name (the policies' WITH CHECK).
do $$
declare
    r text;
begin
    foreach r in array array['chargeback_bi', 'chargeback_finance', 'chargeback_engineer', 'chargeback_reviewer',
                             'chargeback_personal']
    loop
        if not exists (select 1 from pg_roles where rolname = r) then
            begin
                execute format('create role %I nologin', r);
            exception when duplicate_object or unique_violation then
                null;  -- roles are the cluster's: another database's ensure_schema created it meanwhile
            end;
        end if;
    end loop;
    if not exists (select 1 from pg_roles where rolname = 'chargeback_dashboard') then
        begin
            -- NOINHERIT: the dashboard's login holds nothing of its own; it reads only after SET ROLE
            -- to the signed-in user's role
            create role chargeback_dashboard login noinherit;
        exception when duplicate_object or unique_violation then
            null;
        end;
    end if;
    -- Roles are the cluster's and this lock is the database's: ensure_schema of another database may
    -- change the same role at the same moment ("tuple concurrently updated"). Only what is missing is
    -- changed, and a concurrent change of the same thing is left to the other session.
    foreach r in array array['chargeback_finance', 'chargeback_engineer', 'chargeback_reviewer', 'chargeback_personal']
    loop
        if not exists (select 1 from pg_auth_members
                       where roleid = 'chargeback_bi'::regrole and member = r::regrole) then
            begin
                execute format('grant chargeback_bi to %I', r);
            exception when internal_error or unique_violation then
                null;
            end;
        end if;
    end loop;
    if not exists (select 1 from pg_db_role_setting
                   where setrole = 'chargeback_dashboard'::regrole and setdatabase = 0
                     and setconfig @> array['statement_timeout=30s', 'idle_in_transaction_session_timeout=60s']) then
        begin
            alter role chargeback_dashboard set statement_timeout = '30s';
            alter role chargeback_dashboard set idle_in_transaction_session_timeout = '60s';
        exception when internal_error or unique_violation then
            null;
        end;
    end if;
    -- no temporary tables for readers (the pipeline is granted TEMP by name above)
    execute format('revoke temporary on database %I from public', current_database());
    execute format('grant connect on database %I to chargeback_bi, chargeback_dashboard', current_database());
    revoke create on schema public from public;
end
$$;

create schema if not exists access;
create table if not exists access.scopes (
    role_name name not null,
    kind text not null check (kind in ('all', 'organisation', 'business_unit', 'team', 'tenant')),
    value text not null default '',
    granted_at timestamptz not null default now(),
    primary key (role_name, kind, value),
    check ((kind = 'all') = (value = ''))
);
-- Dashboard users (the embedded sign-in): a password hash (scrypt, chargeback.platform.access)
-- and the NOLOGIN role the dashboard's queries run as.
create table if not exists access.users (
    user_name text primary key check (user_name ~ '^[a-z][a-z0-9_.-]{0,39}$'),
    role text not null check (role in ('finance', 'engineer', 'tenant')),
    db_role name not null unique,
    password_hash text not null,
    created_at timestamptz not null default now(),
    disabled boolean not null default false
);
-- The tenants the current role may see. A view runs with its owner's privileges, but
-- current_user is the reader's: readers select from it and never from access.scopes.
create or replace view access.my_tenants with (security_barrier) as
select t.tenant_id
from config.tenants as t
where exists (
    select 1 from access.scopes as s
    where s.role_name = current_user
      and (s.kind = 'all'
           or (s.kind = 'organisation' and s.value = t.organisation)
           or (s.kind = 'business_unit' and s.value = t.business_unit)
           or (s.kind = 'team' and s.value = t.team)
           or (s.kind = 'tenant' and s.value = t.tenant_id))
);
create or replace view access.my_scopes with (security_barrier) as
select kind, value from access.scopes where role_name = current_user;
-- Who the current role signs in as (a dashboard user), for the ack/accept records.
create or replace view access.me with (security_barrier) as
select user_name, role from access.users where db_role = current_user and not disabled;
-- A budget version is the reader's when every tenant it covers is (each version by its own scope).
create or replace view access.my_budgets with (security_barrier) as
select b.budget_id, b.valid_from, b.valid_to
from config.budgets as b
where exists (select 1 from config.tenants as t
              where (b.organisation is null or t.organisation = b.organisation)
                and (b.business_unit is null or t.business_unit = b.business_unit)
                and (b.team is null or t.team = b.team)
                and (b.tenant_id is null or t.tenant_id = b.tenant_id))
  and not exists (select 1 from config.tenants as t
                  where (b.organisation is null or t.organisation = b.organisation)
                    and (b.business_unit is null or t.business_unit = b.business_unit)
                    and (b.team is null or t.team = b.team)
                    and (b.tenant_id is null or t.tenant_id = b.tenant_id)
                    and t.tenant_id not in (select tenant_id from access.my_tenants));
-- The budgets whose scope is exactly the reader's (a tenant's viewer and its tenant's budget, an
-- organisation's and the organisation's): the dashboard draws them against its forecast.
create or replace view access.my_scope_budgets with (security_barrier) as
select b.budget_id
from (select distinct budget_id, organisation, business_unit, team, tenant_id from config.budgets
      where source is null and label_key is null) as b
where exists (select 1 from access.my_tenants)
  and not exists (select 1 from config.tenants as t
                  where (b.organisation is null or t.organisation = b.organisation)
                    and (b.business_unit is null or t.business_unit = b.business_unit)
                    and (b.team is null or t.team = b.team)
                    and (b.tenant_id is null or t.tenant_id = b.tenant_id)
                    and t.tenant_id not in (select tenant_id from access.my_tenants))
  and not exists (select 1 from access.my_tenants as m join config.tenants as t on t.tenant_id = m.tenant_id
                  where not ((b.organisation is null or t.organisation = b.organisation)
                             and (b.business_unit is null or t.business_unit = b.business_unit)
                             and (b.team is null or t.team = b.team)
                             and (b.tenant_id is null or t.tenant_id = b.tenant_id)));
-- A source's usage per hour, for the dashboard's drill from a source's day to its hours (the
-- marts keep sources by day): raw rows of the reader's tenants only, summed. security_barrier:
-- the reader's own conditions (one tenant, one day) run after the scope's, never before it.
create or replace view access.my_source_usage_hourly with (security_barrier) as
select u.tenant_id, u.source, u.meter, u.hour_start, sum(u.value) as quantity
from raw.usage_snapshots as u
where u.tenant_id in (select tenant_id from access.my_tenants)
group by u.tenant_id, u.source, u.meter, u.hour_start;
create or replace function access.sees_all() returns boolean
    language sql stable set search_path = pg_catalog, pg_temp
    as $$ select exists (select 1 from access.my_scopes where kind = 'all') $$;
create or replace function access.personal_columns() returns name[]
    language sql immutable
    as $$ select array['billing_email']::name[] $$;
create or replace function access.viewer_name() returns text
    language sql stable set search_path = pg_catalog, pg_temp
    as $$ select user_name from access.me $$;

-- Secure one relation for readers, idempotently: a table gets FORCE ROW LEVEL SECURITY, a policy
-- giving the pipeline everything and one giving chargeback_bi the rows of its scope (`scope`:
-- an SQL condition; by default its tenant_id's, and for a table without one, nothing unless
-- the reader sees all); a view becomes security_invoker. Then chargeback_bi may select it
-- (personal columns: chargeback_finance only). dbt calls it after building every mart and
-- intermediate model (macro secure_for_readers), in the model's own transaction, so a rebuilt
-- table is never readable without its policies; ensure_schema calls it for this file's tables.
create or replace function access.secure_relation(rel regclass, scope text default null) returns void
    language plpgsql set search_path = pg_catalog, pg_temp
as $$
declare
    relation_kind "char";
    pipeline name := access.pipeline_role();
    condition text := scope;
    personal name[];
    others text;
begin
    select relkind into relation_kind from pg_class where oid = rel;
    if relation_kind = 'v' then
        if not coalesce((select 'security_invoker=true' = any (reloptions) from pg_class where oid = rel), false) then
            execute format('alter view %s set (security_invoker = true)', rel);
        end if;
    elsif relation_kind in ('r', 'p') then
        if condition is null then  -- the condition the relation was secured with (ensure_schema passes none)
            condition := (select obj_description(p.oid, 'pg_policy') from pg_policy as p
                          where polrelid = rel and polname = 'readers_in_scope');
        end if;
        if condition is null then
            condition := case when exists (select 1 from pg_attribute
                                           where attrelid = rel and attname = 'tenant_id' and not attisdropped)
                then '(select access.sees_all()) or tenant_id in (select tenant_id from access.my_tenants)'
                else '(select access.sees_all())' end;
        end if;
        if not (select relrowsecurity and relforcerowsecurity from pg_class where oid = rel)
           or not exists (select 1 from pg_policy where polrelid = rel and polname = 'pipeline_all')
           or not exists (select 1 from pg_policy as p where polrelid = rel and polname = 'readers_in_scope'
                          -- the condition as given is kept as the policy's comment: a changed one is applied
                          and obj_description(p.oid, 'pg_policy') = condition) then
            execute format('alter table %s enable row level security', rel);
            execute format('alter table %s force row level security', rel);
            execute format('drop policy if exists pipeline_all on %s', rel);
            execute format('create policy pipeline_all on %s to %I using (true) with check (true)', rel, pipeline);
            execute format('drop policy if exists readers_in_scope on %s', rel);
            execute format('create policy readers_in_scope on %s for select to chargeback_bi using (%s)',
                           rel, condition);
            execute format('comment on policy readers_in_scope on %s is %L', rel, condition);
        end if;
    else
        return;
    end if;
    personal := array(select attname from pg_attribute where attrelid = rel and attnum > 0 and not attisdropped
                      and attname = any (access.personal_columns()));
    if cardinality(personal) = 0 then
        execute format('grant select on %s to chargeback_bi', rel);
    else
        select string_agg(quote_ident(attname), ', ' order by attnum) into others
        from pg_attribute where attrelid = rel and attnum > 0 and not attisdropped and attname <> all (personal);
        execute format('revoke select on %s from chargeback_bi', rel);
        execute format('grant select (%s) on %s to chargeback_bi', others, rel);
        execute format('grant select on %s to chargeback_personal', rel);
    end if;
end
$$;

do $$
declare
    pipeline_role text := current_setting('chargeback.pipeline_role');
    r record;
begin
    execute format('create or replace function access.pipeline_role() returns name language sql immutable'
                   ' as %L', format('select %L::name', pipeline_role));
    -- readers see their scope through these, and nothing of access.users or access.scopes
    grant usage on schema access to chargeback_bi, chargeback_dashboard;
    grant select on access.my_tenants, access.my_scopes, access.me, access.my_budgets,
        access.my_scope_budgets, access.my_source_usage_hourly to chargeback_bi;
    revoke all on access.users, access.scopes from chargeback_bi;
    -- the sign-in: the dashboard's login reads names, roles and hashes, and may do nothing else
    grant select (user_name, role, db_role, password_hash, disabled) on access.users to chargeback_dashboard;
    execute format('grant usage on schema access to %I', pipeline_role);
    execute format('grant execute on function access.secure_relation(regclass, text) to %I', pipeline_role);
    revoke execute on function access.secure_relation(regclass, text) from public;
    execute format('grant select on access.my_tenants, access.my_scopes, access.me, access.my_budgets to %I',
                   pipeline_role);

    -- this file's tables that readers see
    grant usage on schema insights, pipeline to chargeback_bi;
    perform access.secure_relation('insights.anomalies');
    perform access.secure_relation('insights.anomaly_days');
    perform access.secure_relation('insights.recommendations');
    perform access.secure_relation('insights.forecasts');
    perform access.secure_relation('insights.budget_status',
        '(select access.sees_all()) or (budget_id, valid_from) in (select budget_id, valid_from from access.my_budgets)');
    perform access.secure_relation('insights.budget_alerts',
        '(select access.sees_all()) or exists (select 1 from access.my_budgets as b where b.budget_id = budget_alerts.budget_id'
        ' and b.valid_from <= budget_alerts.month and (b.valid_to is null or budget_alerts.month < b.valid_to))');
    perform access.secure_relation('pipeline.invoices');
    perform access.secure_relation('pipeline.invoice_lines',
                                   'document_id in (select document_id from pipeline.invoices)');
    -- pipeline health (the dashboard's page for data engineers): engineers and finance, of the whole
    -- platform only (its rows name tenants, files and producers of every scope)
    grant select on pipeline.load_runs, pipeline.load_files, pipeline.load_holds, pipeline.transform_runs,
        pipeline.events, pipeline.validations, pipeline.month_closes to chargeback_engineer, chargeback_finance;
    perform access.secure_relation(health.name::regclass, '(select access.sees_all())')
    from unnest(array['pipeline.load_runs', 'pipeline.load_files', 'pipeline.load_holds', 'pipeline.transform_runs',
                      'pipeline.events', 'pipeline.validations', 'pipeline.month_closes',
                      'raw.usage_quarantine']) as health (name);
    revoke select on pipeline.load_runs, pipeline.load_files, pipeline.load_holds, pipeline.transform_runs,
        pipeline.events, pipeline.validations, pipeline.month_closes, raw.usage_quarantine from chargeback_bi;
    grant usage on schema raw to chargeback_engineer, chargeback_finance;
    grant select (quarantine_id, load_id, source_file, source_line, landed_hour, field, reason, status,
        quarantined_at, resolved_at, tenant_id) on raw.usage_quarantine
        to chargeback_engineer, chargeback_finance;

    -- a dashboard user acknowledges an anomaly, accepts or dismisses a recommendation: of its
    -- scope, in its own name
    grant update (status, ack_kind, ack_by, ack_reason, ack_at) on insights.anomalies to chargeback_reviewer;
    drop policy if exists reviewers_acknowledge on insights.anomalies;
    create policy reviewers_acknowledge on insights.anomalies for update to chargeback_reviewer
        using ((select access.sees_all()) or tenant_id in (select tenant_id from access.my_tenants))
        with check (status = 'acknowledged' and ack_by = (select access.viewer_name()));
    grant update (status, status_by, status_reason, status_at) on insights.recommendations to chargeback_reviewer;
    drop policy if exists reviewers_decide on insights.recommendations;
    create policy reviewers_decide on insights.recommendations for update to chargeback_reviewer
        using ((select access.sees_all()) or tenant_id in (select tenant_id from access.my_tenants))
        with check (status in ('accepted', 'dismissed') and status_by = (select access.viewer_name()));

    -- dbt's schemas: what exists is secured now (an upgraded warehouse); what dbt builds later is
    -- secured by its post-hook. Nothing is readable by default: no default privileges.
    for r in select nspname from pg_namespace where nspname in ('marts', 'intermediate', 'staging') loop
        execute format('grant usage on schema %I to chargeback_bi', r.nspname);
    end loop;
    for r in select c.oid::regclass as rel from pg_class as c join pg_namespace as n on n.oid = c.relnamespace
             where n.nspname in ('marts', 'intermediate') and c.relkind in ('r', 'p', 'v')
    loop
        perform access.secure_relation(r.rel);
    end loop;
    if exists (select 1 from pg_namespace where nspname = 'marts') then
        execute format('alter default privileges for role %I in schema marts revoke select on tables from chargeback_bi',
                       pipeline_role);
    end if;
end
$$;
-- ---- end of readers ----
