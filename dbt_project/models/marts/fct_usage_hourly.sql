{{
    config(
        materialized='incremental',
        incremental_strategy='append',
        on_schema_change='fail',
        pre_hook="{{ delete_window() }}",
        indexes=[
            {'columns': ['hour_start', 'tenant_id', 'meter'], 'unique': true},
        ],
    )
}}

with

snapshots as (

    select * from {{ ref('stg_raw__usage_snapshots') }}
    where {{ window_hours('hour_start') }}

),

meters as (

    select * from {{ ref('stg_config__meters') }}

),

hourly as (

    select
        tenant_id,
        meter,
        hour_start,
        sum(quantity)::numeric(38, 12) as quantity,
        count(*) as snapshot_count

    from snapshots

    group by tenant_id, meter, hour_start

),

final as (

    select
        hourly.tenant_id,
        hourly.meter,
        hourly.hour_start,
        hourly.quantity,
        meters.unit,
        meters.kind,
        hourly.snapshot_count::integer as snapshot_count

    from hourly

    left join meters
        on hourly.meter = meters.meter

)

select * from final
