{#-
    Every pool-hour's cost split over the tenants in proportion to their usage of
    the pool's driver meter in that hour, rounded to cents by largest remainder
    (ties to the lower tenant_id), so the tenants' shares add up to the pool cost
    exactly. An hour in which no tenant used the driver keeps its cost visible as
    one row with tenant_id null and method 'unallocated'.
-#}
{{
    config(
        materialized='incremental',
        incremental_strategy='append',
        on_schema_change='fail',
        pre_hook="{{ delete_window() }}",
        indexes=[
            {'columns': ['hour_start', 'pool', 'tenant_id']},
        ],
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

    select
        pool_hours.pool,
        pool_hours.hour_start,
        usage.tenant_id,
        usage.quantity as driver_quantity,
        sum(usage.quantity) over (
            partition by pool_hours.pool, pool_hours.hour_start
        ) as driver_total

    from pool_hours

    inner join usage
        on
            pool_hours.hour_start = usage.hour_start
            and pool_hours.driver_meter = usage.meter

    where
        pool_hours.method = 'proportional'
        and usage.quantity > 0

),

allocated as (

    select
        pool_hours.pool,
        pool_hours.hour_start,
        drivers.tenant_id,
        pool_hours.method,
        pool_hours.driver_meter,
        drivers.driver_quantity,
        drivers.driver_total,
        round(
            drivers.driver_quantity / drivers.driver_total, 12
        )::numeric(38, 12) as ratio,
        {{ largest_remainder(
            amount='pool_hours.pool_cost',
            weight='drivers.driver_quantity',
            total_weight='drivers.driver_total',
            partition_by='drivers.pool, drivers.hour_start',
            order_by='drivers.tenant_id',
        ) }} as allocated_cost,
        pool_hours.currency,
        pool_hours.rule_valid_from

    from drivers

    inner join pool_hours
        on
            drivers.pool = pool_hours.pool
            and drivers.hour_start = pool_hours.hour_start

),

unallocated as (

    select
        pool_hours.pool,
        pool_hours.hour_start,
        null::text as tenant_id,
        'unallocated' as method,
        pool_hours.driver_meter,
        0::numeric(38, 12) as driver_quantity,
        0::numeric(38, 12) as driver_total,
        1::numeric(38, 12) as ratio,
        pool_hours.pool_cost as allocated_cost,
        pool_hours.currency,
        pool_hours.rule_valid_from

    from pool_hours

    where not exists (
        select 1
        from drivers
        where
            drivers.pool = pool_hours.pool
            and drivers.hour_start = pool_hours.hour_start
    )

),

final as (

    select * from allocated
    union all
    select * from unallocated

)

select * from final
