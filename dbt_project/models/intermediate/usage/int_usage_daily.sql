{#-
    int_usage_hourly summed per tenant, meter and UTC day: the step between
    the hourly usage and the daily ledger (int_ledger_daily), so that an hourly
    run re-adds the day it touched (at most 24 hours of rows) instead of every
    hour of the month so far. quantity is the sum of the day's hourly values
    (for a gauge: unit-hours, e.g. GB-hours); hour_count the hours with usage.

    Windowed by day: a run deletes and rebuilds the whole UTC days its window
    touches (all days without a window).
-#}
{{ config(indexes=[{'columns': ['usage_day']}]) }}

with

usage as (

    select * from {{ ref('int_usage_hourly') }}
    -- the whole UTC days the window touches
    where {{ window_days('hour_start', 'timestamptz') }}

),

daily as (

    select
        (hour_start at time zone 'UTC')::date as usage_day,
        tenant_id,
        meter,
        min(unit) as unit,
        min(kind) as kind,
        sum(quantity) as quantity,
        count(*) as hour_count,
        max(hour_start) as last_hour_start

    from usage

    group by (hour_start at time zone 'UTC')::date, tenant_id, meter

),

final as (

    select
        usage_day,
        tenant_id,
        meter,
        quantity::numeric(38, 12) as quantity,
        unit,
        kind,
        hour_count::integer as hour_count,
        last_hour_start

    from daily

    order by usage_day, tenant_id, meter

)

select * from final
