{#-
    Each pool's monthly cost spread evenly over the hours of the calendar month
    (UTC), in cents, so that the hours of a month add up to the monthly cost
    exactly: largest remainder with equal weights, so the leftover cents go to
    the earliest hours. A version of the pool that starts or ends inside a
    month keeps only its hours, i.e. the month is prorated by the hour.

    A pool with a capacity is then split, per hour, into used and idle cost:
    utilisation u = min(1, Σ usage of the capacity meter / capacity per hour),
    used = u x pool cost and idle = (1 - u) x pool cost by largest remainder
    (exact weights min(used, capacity) and capacity - that, so no rounded u is
    ever multiplied). Without a capacity the whole cost is used.

    Hours produced: with a window, the window's hours (the spread is computed
    over their whole months); without, every hour of each month with usage.
-#}
{{ config(indexes=[{'columns': ['hour_start', 'pool'], 'unique': true}]) }}

{% set window = chargeback_window() %}

with

cost_pools as (

    select * from {{ ref('stg_config__cost_pools') }}

),

snapshots as (

    select * from {{ ref('stg_raw__usage_snapshots') }}
    where {{ window_hours('hour_start') }}

),

meter_hours as (

    -- every tenant's usage of each meter per hour, in one pass over the
    -- snapshots: the capacity meters' totals, and (without a window) the
    -- months to build
    select
        hour_start,
        meter,
        sum(quantity) as quantity

    from snapshots

    group by hour_start, meter

),

months as (

    {% if window is none -%}
    select distinct
        date_trunc('month', hour_start at time zone 'UTC')
            as month_start

    from meter_hours
    {%- else -%}
    select month_start

    from generate_series(
        timestamp '{{ window.first_month }}',
        timestamp '{{ window.end_month }}' - interval '1 month',
        interval '1 month'
    ) as months (month_start)
    {%- endif %}

),

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

version_months as (

    select
        cost_pools.pool,
        cost_pools.valid_from as rule_valid_from,
        cost_pools.valid_to as rule_valid_to,
        cost_pools.monthly_cost,
        cost_pools.currency,
        cost_pools.capacity_meter,
        cost_pools.capacity_per_hour,
        cost_pools.idle_policy,
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

    from version_months

),

pool_hours as (

    select
        pool,
        (hour_utc at time zone 'UTC') as hour_start,
        pool_cost,
        currency,
        rule_valid_from,
        monthly_cost,
        hours_in_month,
        capacity_meter,
        capacity_per_hour as capacity,
        idle_policy

    from spread

    where
        hour_utc >= rule_valid_from
        and (rule_valid_to is null or hour_utc < rule_valid_to)
        and {{ window_hours("(hour_utc at time zone 'UTC')") }}

),

utilised as (

    select
        pool_hours.*,
        case
            when pool_hours.capacity_meter is not null
                then coalesce(meter_hours.quantity, 0)
        end as capacity_used

    from pool_hours

    left join meter_hours
        on
            pool_hours.hour_start = meter_hours.hour_start
            and pool_hours.capacity_meter = meter_hours.meter

),

split_weights as (

    -- two rows per pool-hour: the used and the idle share of the capacity
    -- (no capacity: weights 1 and 0)
    select
        utilised.pool,
        utilised.hour_start,
        utilised.pool_cost,
        cost_kinds.cost_kind,
        coalesce(utilised.capacity, 1) as split_total,
        case cost_kinds.cost_kind
            when 'used'
                then coalesce(
                    least(utilised.capacity_used, utilised.capacity), 1
                )
            else
                coalesce(
                    utilised.capacity
                    - least(utilised.capacity_used, utilised.capacity),
                    0
                )
        end as weight

    from utilised

    cross join (values ('used'), ('idle')) as cost_kinds (cost_kind)

),

split as (

    select
        pool,
        hour_start,
        cost_kind,
        {{ largest_remainder(
            amount='pool_cost',
            weight='weight',
            total_weight='split_total',
            partition_by='pool, hour_start',
            order_by='cost_kind collate "C"',
        ) }} as cost

    from split_weights

),

split_costs as (

    select
        pool,
        hour_start,
        sum(cost) filter (where cost_kind = 'used') as used_cost,
        sum(cost) filter (where cost_kind = 'idle') as idle_cost

    from split

    group by pool, hour_start

),

final as (

    select
        utilised.pool,
        utilised.hour_start,
        utilised.pool_cost,
        split_costs.used_cost::numeric(18, 2) as used_cost,
        split_costs.idle_cost::numeric(18, 2) as idle_cost,
        utilised.capacity_meter,
        utilised.capacity::numeric(38, 12) as capacity,
        utilised.capacity_used::numeric(38, 12) as capacity_used,
        round(
            least(utilised.capacity_used, utilised.capacity)
            / utilised.capacity,
            12
        )::numeric(38, 12) as utilisation,
        utilised.currency,
        utilised.rule_valid_from,
        utilised.monthly_cost,
        utilised.hours_in_month,
        utilised.idle_policy

    from utilised

    inner join split_costs
        on
            utilised.pool = split_costs.pool
            and utilised.hour_start = split_costs.hour_start

)

select * from final
