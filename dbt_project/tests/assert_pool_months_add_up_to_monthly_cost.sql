-- A month whose hours are all present under one rule version adds up exactly
-- to that version's monthly cost (the hourly spread never loses or invents a
-- cent). Returns offending pool-months.

with

pool_hours as (

    select * from {{ ref('fct_cost_pools_hourly') }}
    where {{ window_months('hour_start', 'timestamptz') }}

),

cost_pools as (

    select * from {{ ref('stg_config__cost_pools') }}

),

pool_months as (

    select
        pool,
        rule_valid_from,
        {{ utc_month('hour_start') }} as month_start,
        count(*) as hours,
        sum(pool_cost) as pool_cost

    from pool_hours

    group by pool, rule_valid_from, {{ utc_month('hour_start') }}

),

final as (

    select
        pool_months.*,
        cost_pools.monthly_cost

    from pool_months

    inner join cost_pools
        on
            pool_months.pool = cost_pools.pool
            and pool_months.rule_valid_from = cost_pools.valid_from

    where
        pool_months.hours = {{ hours_in_month('pool_months.month_start') }}
        and pool_months.pool_cost <> cost_pools.monthly_cost

)

select * from final
