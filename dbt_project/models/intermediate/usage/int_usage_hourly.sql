{{ config(indexes=[{'columns': ['hour_start']}]) }}

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
        count(*) as snapshot_count,
        max(learned_at) as last_learned_at

    from snapshots

    group by hour_start, tenant_id, meter

),

final as (

    select
        hourly.tenant_id,
        hourly.meter,
        hourly.hour_start,
        hourly.quantity,
        meters.unit,
        meters.kind,
        hourly.snapshot_count::integer as snapshot_count,
        hourly.last_learned_at

    from hourly

    -- left join: an unknown meter fails the not-null constraint on unit
    left join meters
        on hourly.meter = meters.meter

    -- written in hour order, so a window's rows sit together on disk
    order by hourly.hour_start, hourly.tenant_id, hourly.meter

)

select * from final
