{#-
    Each pool's monthly cost spread evenly over the hours of the calendar month
    (UTC), in cents, so that the hours of a month add up to the monthly cost
    exactly: largest remainder with equal weights, so the leftover cents go to
    the earliest hours. A version of the rule that starts or ends inside a
    month keeps only its hours, i.e. the month is prorated by the hour.

    Hours produced: with a window, the window's hours (the spread is computed
    over their whole months); without, every hour of each month with usage.
-#}
{#- Declared always, although a windowed run doesn't read it, so the DAG (and
    cosmos' rendering of it) doesn't change with the vars. #}
-- depends_on: {{ ref('stg_raw__usage_snapshots') }}
{% set window = chargeback_window() %}

with

cost_pools as (

    select * from {{ ref('stg_config__cost_pools') }}

),

{% if window is none -%}
snapshots as (

    select * from {{ ref('stg_raw__usage_snapshots') }}

),

months as (

    select distinct
        date_trunc('month', hour_start at time zone 'UTC') as month_start

    from snapshots

),
{%- else -%}
months as (

    select month_start

    from generate_series(
        timestamp '{{ window.first_month }}',
        timestamp '{{ window.end_month }}' - interval '1 month',
        interval '1 month'
    ) as months (month_start)

),
{%- endif %}

month_hours as (

    select
        months.month_start,
        hours.hour_utc,
        {{ hours_in_month('months.month_start') }} as hours_in_month

    from months

    cross join lateral generate_series(
        months.month_start,
        months.month_start + interval '1 month' - interval '1 hour',
        interval '1 hour'
    ) as hours (hour_utc)

),

rule_months as (

    select
        cost_pools.pool,
        cost_pools.valid_from as rule_valid_from,
        cost_pools.valid_to as rule_valid_to,
        cost_pools.monthly_cost,
        cost_pools.currency,
        cost_pools.method,
        cost_pools.driver_meter,
        month_hours.month_start,
        month_hours.hour_utc,
        month_hours.hours_in_month

    from cost_pools

    inner join month_hours
        on
            cost_pools.valid_from < month_hours.month_start + interval '1 month'
            and (
                cost_pools.valid_to is null
                or cost_pools.valid_to > month_hours.month_start
            )

),

spread as (

    select
        *,
        {{ largest_remainder(
            amount='monthly_cost',
            weight='1',
            total_weight='hours_in_month',
            partition_by='pool, rule_valid_from, month_start',
            order_by='hour_utc',
        ) }} as pool_cost

    from rule_months

),

final as (

    select
        pool,
        (hour_utc at time zone 'UTC') as hour_start,
        pool_cost,
        currency,
        method,
        driver_meter,
        rule_valid_from,
        monthly_cost,
        hours_in_month

    from spread

    where
        hour_utc >= rule_valid_from
        and (rule_valid_to is null or hour_utc < rule_valid_to)
        and {{ window_hours("(hour_utc at time zone 'UTC')") }}

)

select * from final
