{#-
    Stored usage of the sources a tenant keeps for a retention class of their
    own (terms' source_retention_days, docs/COST_ENGINE.md "Retention per
    source"), per tenant, meter, UTC hour and retention_days: the input of the
    pricing of retention classes beside int_usage_hourly.

    Only meters some price book prices by retention, and only the snapshots of
    those sources, are here: a tenant without per-source classes has no row,
    and its stored GB-months are priced at its default class exactly as
    before. The terms of an hour are those in force on the first day of its
    month (contract terms are monthly).

    Windowed by hour, like int_usage_hourly. A change to the source classes of
    a month already built applies when the month is rebuilt.
-#}
{{ config(indexes=[{'columns': ['hour_start']}]) }}

with

snapshots as (

    select * from {{ ref('stg_raw__usage_snapshots') }}
    where {{ window_hours('hour_start') }}

),

prices as (

    select * from {{ ref('stg_config__prices') }}

),

tenant_terms as (

    select * from {{ ref('stg_config__tenant_terms') }}

),

source_retention as (

    select * from {{ ref('stg_config__tenant_source_retention') }}

),

retention_meters as (

    select distinct meter

    from prices

    where pricing_model = 'retention'

),

source_terms as (

    -- each source with a class of its own, with the months of its terms
    select
        source_retention.tenant_id,
        source_retention.source,
        source_retention.retention_days,
        tenant_terms.valid_from,
        tenant_terms.valid_to

    from source_retention

    inner join tenant_terms
        on
            source_retention.tenant_id = tenant_terms.tenant_id
            and source_retention.valid_from = tenant_terms.valid_from

),

classed as (

    select
        snapshots.tenant_id,
        snapshots.meter,
        snapshots.hour_start,
        snapshots.quantity,
        source_terms.retention_days

    from snapshots

    inner join retention_meters
        on snapshots.meter = retention_meters.meter

    inner join source_terms
        on
            snapshots.tenant_id = source_terms.tenant_id
            and snapshots.source = source_terms.source
            and {{ utc_month('snapshots.hour_start') }} >= source_terms.valid_from
            and (
                source_terms.valid_to is null
                or {{ utc_month('snapshots.hour_start') }}
                < source_terms.valid_to
            )

),

final as (

    select
        tenant_id,
        meter,
        hour_start,
        retention_days,
        sum(quantity)::numeric(38, 12) as quantity

    from classed

    group by hour_start, tenant_id, meter, retention_days

)

select * from final
