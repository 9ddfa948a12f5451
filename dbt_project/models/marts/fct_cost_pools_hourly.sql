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
        currency,
        method,
        driver_meter,
        rule_valid_from

    from pool_hours

)

select * from final
