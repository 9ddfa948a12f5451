{#-
    int_cost_allocations_hourly summed per UTC day: the step between the hourly
    fact and fct_cost_allocations_monthly, so that an hourly run re-adds the
    day it touched (at most 24 hours of rows) and the month's days, instead of
    every hourly row of the month so far.

    Windowed by day: a run deletes and rebuilds the whole UTC days its window
    touches (all days without a window).
-#}
{#- work_mem for this model's transaction: the day's groups fit in a hash table
    instead of an external sort of the hourly rows (a month of 1,000 tenants:
    340,000 groups of 7.9 M rows, 14.3 s sorted on disk, 8.2 s hashed in about
    270 MB; docs/BENCHMARKS.md). A bigger month's hash spills to disk in batches. #}
{{
    config(
        pre_hook="set local work_mem = '256MB'",
        indexes=[{'columns': ['cost_day']}],
    )
}}

with

allocations as (

    select * from {{ ref('int_cost_allocations_hourly') }}
    -- the whole UTC days the window touches
    where {{ window_days('hour_start', 'timestamptz') }}

),

daily as (

    select
        (hour_start at time zone 'UTC')::date as cost_day,
        tenant_id,
        pool,
        rule_valid_from,
        part,
        method,
        component,
        cost_type,
        driver_meter,
        currency,
        sum(driver_quantity) as driver_quantity,
        sum(allocated_cost) as allocated_cost,
        count(*) as hour_count

    from allocations

    group by
        (hour_start at time zone 'UTC')::date,
        tenant_id,
        pool,
        rule_valid_from,
        part,
        method,
        component,
        cost_type,
        driver_meter,
        currency

),

final as (

    select
        cost_day,
        tenant_id,
        pool,
        rule_valid_from,
        part,
        method,
        component,
        cost_type,
        driver_meter,
        currency,
        driver_quantity::numeric(38, 12) as driver_quantity,
        allocated_cost::numeric(18, 2) as allocated_cost,
        hour_count::integer as hour_count

    from daily

)

select * from final
