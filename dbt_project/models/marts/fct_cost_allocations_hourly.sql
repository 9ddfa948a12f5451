{#-
    Every pool-hour's cost split over the tenants in proportion to their usage
    of the pool's driver meter in that hour, rounded to cents by largest
    remainder (ties to the lower tenant_id, compared byte by byte), so that the
    tenants' shares add up to the pool cost exactly. An hour in which no tenant
    used the driver keeps its cost visible as one row with tenant_id null and
    method 'unallocated'.
-#}
{{
    config(
        materialized='incremental',
        incremental_strategy='append',
        on_schema_change='fail',
        pre_hook="{{ delete_window() }}",
        post_hook="{{ analyze_after_large_write() }}",
        indexes=[{'columns': ['hour_start']}],
    )
}}

with

pool_hours as (

    select * from {{ ref('fct_cost_pools_hourly') }}
    where {{ window_hours('hour_start') }}

),

usage as (

    select * from {{ ref('fct_usage_hourly') }}
    where {{ window_hours('hour_start') }}

),

drivers as (

    -- one row per pool-hour and tenant with driver usage; a pool-hour without
    -- any keeps a single row with tenant_id null (left join)
    select
        pool_hours.hour_start,
        pool_hours.pool,
        pool_hours.pool_cost,
        usage.tenant_id,
        usage.quantity as driver_quantity,
        sum(usage.quantity) over (
            partition by pool_hours.hour_start, pool_hours.pool
        ) as driver_total

    from pool_hours

    left join usage
        on
            pool_hours.hour_start = usage.hour_start
            and pool_hours.driver_meter = usage.meter
            and pool_hours.method = 'proportional'
            and usage.quantity > 0

),

allocated as (

    select
        hour_start,
        pool,
        tenant_id,
        driver_quantity,
        driver_total,
        coalesce(
            {{ largest_remainder(
                amount='pool_cost',
                weight='driver_quantity',
                total_weight='nullif(driver_total, 0)',
                partition_by='hour_start, pool',
                order_by='tenant_id collate "C"',
            ) }},
            pool_cost
        ) as allocated_cost

    from drivers

),

final as (

    select
        allocated.pool,
        allocated.hour_start,
        allocated.tenant_id,
        case
            when allocated.tenant_id is null then 'unallocated'
            else pool_hours.method
        end as method,
        pool_hours.driver_meter,
        coalesce(allocated.driver_quantity, 0)::numeric(38, 12)
            as driver_quantity,
        coalesce(allocated.driver_total, 0)::numeric(38, 12) as driver_total,
        coalesce(
            round(allocated.driver_quantity / allocated.driver_total, 12), 1
        )::numeric(38, 12) as ratio,
        allocated.allocated_cost,
        pool_hours.currency,
        pool_hours.rule_valid_from

    from allocated

    inner join pool_hours
        on
            allocated.hour_start = pool_hours.hour_start
            and allocated.pool = pool_hours.pool

)

select * from final
