{#-
    Cost of each pool per UTC hour (int_cost_pools_hourly): the monthly cost
    spread over the month's hours, and for a pool with a capacity its split
    into used and idle cost by the hour's utilisation.
-#}
{{
    config(
        materialized='incremental',
        incremental_strategy='append',
        on_schema_change='fail',
        pre_hook="{{ delete_window() }}",
        post_hook="{{ analyze_after_large_write() }}",
        indexes=[
            {'columns': ['hour_start', 'pool'], 'unique': true},
        ],
    )
}}

with

pool_hours as (

    select * from {{ ref('int_cost_pools_hourly') }}

),

final as (

    select
        pool,
        hour_start,
        pool_cost,
        used_cost,
        idle_cost,
        capacity_meter,
        capacity,
        capacity_used,
        utilisation,
        currency,
        rule_valid_from,
        monthly_cost,
        hours_in_month,
        idle_policy

    from pool_hours

)

select * from final
