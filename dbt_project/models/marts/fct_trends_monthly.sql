{#-
    Monthly series of the two ledgers at every level, per meter and '(all)':
    fct_trends_daily summed per calendar month (so every level the daily mart
    has is here too, and a month in progress is its month to date).

    Month-over-month deltas compare like with like: a month in progress,
    known through usage_through (days_elapsed days, the last one perhaps in
    part), against the same stretch of the previous month: its first
    days_elapsed - 1 days and the share of the next day that has elapsed
    (last_day_fraction: usage through 18:00 compares with 0.75 of that day);
    a complete month against the whole previous month. Unit costs as in
    fct_trends_daily, over the month.

    Windowed by month; the run reads the window's months of daily rows and
    the month before them.
-#}
{{ config(indexes=[{'columns': ['trend_month']}]) }}

with

daily as (

    select * from {{ ref('fct_trends_daily') }}
    where {{ window_months_with_lookback('trend_day', 31) }}

),

freshness as (

    select {{ usage_through() }} as usage_through

),

months as (

    select
        months_of_run.trend_month,
        least(
            freshness.usage_through,
            (months_of_run.trend_month + interval '1 month')::timestamp
            at time zone 'UTC'
        ) as usage_through,
        coalesce(
            freshness.usage_through
            >= (months_of_run.trend_month + interval '1 month')::timestamp
            at time zone 'UTC',
            false
        ) as is_complete

    from (
        select distinct date_trunc('month', trend_day)::date as trend_month
        from daily
        where {{ window_months('trend_day', 'date') }}
    ) as months_of_run

    cross join freshness

),

counted as (

    select
        *,
        greatest(
            1,
            ceil(
                extract(
                    epoch from usage_through
                    - trend_month::timestamp at time zone 'UTC'
                ) / 86400
            )
        )::integer as days_elapsed

    from months

),

elapsed as (

    select
        *,
        case
            when is_complete then 1
            else least(
                1,
                extract(
                    epoch from usage_through
                    - (trend_month + days_elapsed - 1)::timestamp
                    at time zone 'UTC'
                ) / 86400
            )
        end as last_day_fraction

    from counted

),

current_month as (

    select
        date_trunc('month', trend_day)::date as trend_month,
        scope_level,
        scope_key,
        organisation,
        business_unit,
        team,
        tenant_id,
        meter,
        min(unit) as unit,
        sum(usage_quantity) as usage_quantity,
        sum(cost_to_serve) as cost_to_serve,
        sum(billed_amount) as billed_amount,
        currency

    from daily

    where {{ window_months('trend_day', 'date') }}

    group by
        date_trunc('month', trend_day)::date,
        scope_level,
        scope_key,
        organisation,
        business_unit,
        team,
        tenant_id,
        meter,
        currency

),

-- the previous month over the same stretch: the day matching the month in
-- progress' partial last day counts in part
previous_days as (

    select
        elapsed.trend_month,
        daily.scope_level,
        daily.scope_key,
        daily.meter,
        daily.currency,
        daily.usage_quantity,
        daily.cost_to_serve,
        daily.billed_amount,
        case
            when
                daily.trend_day
                = (elapsed.trend_month - interval '1 month')::date
                + elapsed.days_elapsed - 1
                then elapsed.last_day_fraction
            else 1
        end as weight

    from elapsed

    inner join daily
        on
            daily.trend_day >= (elapsed.trend_month - interval '1 month')::date
            and daily.trend_day < least(
                elapsed.trend_month,
                (elapsed.trend_month - interval '1 month')::date
                + elapsed.days_elapsed
            )

),

previous_month as (

    select
        trend_month,
        scope_level,
        scope_key,
        meter,
        currency,
        sum(usage_quantity * weight) as usage_quantity,
        sum(cost_to_serve * weight) as cost_to_serve,
        sum(billed_amount * weight) as billed_amount

    from previous_days

    group by
        trend_month,
        scope_level,
        scope_key,
        meter,
        currency

),

compared as (

    select
        current_month.*,
        current_month.billed_amount - current_month.cost_to_serve as margin,
        sum(current_month.usage_quantity) filter (
            where current_month.meter = 'ingested_gb'
        ) over (
            partition by
                current_month.trend_month,
                current_month.scope_level,
                current_month.scope_key
        ) as ingested_gb,
        previous_month.usage_quantity as previous_usage_quantity,
        previous_month.cost_to_serve as previous_cost_to_serve,
        previous_month.billed_amount as previous_billed_amount,
        elapsed.days_elapsed,
        elapsed.usage_through,
        elapsed.is_complete

    from current_month

    inner join elapsed
        on current_month.trend_month = elapsed.trend_month

    left join previous_month
        on
            current_month.trend_month = previous_month.trend_month
            and current_month.scope_level = previous_month.scope_level
            and current_month.scope_key = previous_month.scope_key
            and current_month.meter = previous_month.meter
            and current_month.currency = previous_month.currency

),

final as (

    select
        trend_month,
        scope_level,
        scope_key,
        organisation,
        business_unit,
        team,
        tenant_id,
        meter,
        unit,
        usage_quantity::numeric(38, 12) as usage_quantity,
        cost_to_serve::numeric(18, 2) as cost_to_serve,
        billed_amount::numeric(18, 2) as billed_amount,
        margin::numeric(18, 2) as margin,
        currency,
        round(cost_to_serve / nullif(usage_quantity, 0), 6)::numeric(24, 6)
            as cost_per_unit,
        round(billed_amount / nullif(usage_quantity, 0), 6)::numeric(24, 6)
            as billed_per_unit,
        case
            when meter = '(all)'
                then round(cost_to_serve / nullif(ingested_gb, 0), 6)
        end::numeric(24, 6) as cost_per_gb_ingested,
        case
            when meter = '(all)'
                then round(billed_amount / nullif(ingested_gb, 0), 6)
        end::numeric(24, 6) as billed_per_gb_ingested,
        days_elapsed,
        (usage_quantity - previous_usage_quantity)::numeric(38, 12)
            as usage_mom_delta,
        round(
            (usage_quantity - previous_usage_quantity)
            / nullif(abs(previous_usage_quantity), 0) * 100,
            2
        )::numeric(14, 2) as usage_mom_percent,
        (cost_to_serve - previous_cost_to_serve)::numeric(18, 2)
            as cost_mom_delta,
        round(
            (cost_to_serve - previous_cost_to_serve)
            / nullif(abs(previous_cost_to_serve), 0) * 100,
            2
        )::numeric(14, 2) as cost_mom_percent,
        (billed_amount - previous_billed_amount)::numeric(18, 2)
            as billed_mom_delta,
        round(
            (billed_amount - previous_billed_amount)
            / nullif(abs(previous_billed_amount), 0) * 100,
            2
        )::numeric(14, 2) as billed_mom_percent,
        (
            margin - (previous_billed_amount - previous_cost_to_serve)
        )::numeric(18, 2) as margin_mom_delta,
        usage_through,
        is_complete

    from compared

    order by trend_month, scope_level, scope_key, meter

)

select * from final
