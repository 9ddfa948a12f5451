{#-
    Daily series of the two ledgers at every level: the platform, each
    organisation, business unit, team and tenant; per meter and '(all)'
    meters. From int_ledger_daily (tenants) and the cost the platform keeps
    (int_cost_allocations_daily, tenant null: meter '(platform)', under
    organisation, business unit, team and tenant '(platform)', as in
    fct_ledger_rollup_monthly), so each level adds up to the ledger marts.

    scope_key names the scope within its level: 'platform'; the organisation;
    'organisation / business unit'; 'organisation / business unit / team'; the
    tenant id. Another level is one more CTE in the union `scoped`, with the
    same columns.

    Unit costs: on a meter's row, cost_per_unit = the cost to serve driven by
    the meter / its usage, billed_per_unit = its billed amount / its usage (a
    gauge in unit-months: per GB-month stored); on '(all)', cost_per_gb_ingested
    and billed_per_gb_ingested = the scope's whole cost to serve or billed
    amount / its GB ingested. Rounded to 6 decimals; null when the usage is 0.

    Deltas: same weekday last week (the day 7 days earlier: delta and %).
    usage_through: the instant up to which usage is known, capped at the day's
    end; is_complete when it reaches the day's end. Days after usage_through
    are left out (a build without a window allocates a month's pool cost to
    hours still to come; the series stops where usage is known).

    Windowed by month, like int_ledger_daily (a month's billed split changes
    with each hour); the run reads the 7 days before the window's first month
    for the look-back.
-#}
{{ config(indexes=[{'columns': ['trend_day']}]) }}

with

ledger as (

    select * from {{ ref('int_ledger_daily') }}
    where {{ window_months_with_lookback('ledger_day', 7) }}

),

kept as (

    select * from {{ ref('int_cost_allocations_daily') }}
    where
        {{ window_months_with_lookback('cost_day', 7) }}
        and tenant_id is null

),

tenants as (

    select * from {{ ref('dim_tenants') }}

),

freshness as (

    select {{ usage_through() }} as usage_through

),

entries as (

    select
        ledger.ledger_day as trend_day,
        coalesce(tenants.organisation, '(platform)') as organisation,
        coalesce(tenants.business_unit, '(platform)') as business_unit,
        coalesce(tenants.team, '(platform)') as team,
        ledger.tenant_id,
        ledger.meter,
        ledger.unit,
        ledger.usage_quantity,
        ledger.cost_to_serve,
        ledger.billed_amount,
        ledger.currency

    from ledger

    left join tenants
        on ledger.tenant_id = tenants.tenant_id

    union all

    select
        cost_day as trend_day,
        '(platform)' as organisation,
        '(platform)' as business_unit,
        '(platform)' as team,
        '(platform)' as tenant_id,
        '(platform)' as meter,
        null as unit,
        null as usage_quantity,
        sum(allocated_cost) as cost_to_serve,
        0 as billed_amount,
        currency

    from kept

    group by cost_day, currency

),

-- the org hierarchy in one pass
hierarchy as (

    select
        trend_day,
        case
            when grouping(organisation) = 1 then 'platform'
            when grouping(business_unit) = 1 then 'organisation'
            when grouping(team) = 1 then 'business_unit'
            when grouping(tenant_id) = 1 then 'team'
            else 'tenant'
        end as scope_level,
        case
            when grouping(organisation) = 1 then 'platform'
            when grouping(business_unit) = 1 then organisation
            when grouping(team) = 1
                then concat_ws(' / ', organisation, business_unit)
            when grouping(tenant_id) = 1
                then concat_ws(' / ', organisation, business_unit, team)
            else tenant_id
        end as scope_key,
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

    from entries

    group by
        trend_day,
        meter,
        currency,
        rollup (organisation, business_unit, team, tenant_id)

),

-- every level: one CTE each, same columns
scoped as (

    select * from hierarchy

),

with_all as (

    select * from scoped

    union all

    select
        trend_day,
        scope_level,
        scope_key,
        organisation,
        business_unit,
        team,
        tenant_id,
        '(all)' as meter,
        null as unit,
        null as usage_quantity,
        sum(cost_to_serve) as cost_to_serve,
        sum(billed_amount) as billed_amount,
        currency

    from scoped

    group by
        trend_day,
        scope_level,
        scope_key,
        organisation,
        business_unit,
        team,
        tenant_id,
        currency

),

compared as (

    select
        *,
        billed_amount - cost_to_serve as margin,
        sum(usage_quantity) filter (where meter = 'ingested_gb') over (
            partition by trend_day, scope_level, scope_key
        ) as ingested_gb,
        sum(usage_quantity) over (
            partition by scope_level, scope_key, meter
            order by trend_day
            range between interval '7 days' preceding
            and interval '7 days' preceding
        ) as week_ago_usage_quantity,
        sum(cost_to_serve) over (
            partition by scope_level, scope_key, meter
            order by trend_day
            range between interval '7 days' preceding
            and interval '7 days' preceding
        ) as week_ago_cost_to_serve,
        sum(billed_amount) over (
            partition by scope_level, scope_key, meter
            order by trend_day
            range between interval '7 days' preceding
            and interval '7 days' preceding
        ) as week_ago_billed_amount

    from with_all

),

final as (

    select
        compared.trend_day,
        compared.scope_level,
        compared.scope_key,
        compared.organisation,
        compared.business_unit,
        compared.team,
        compared.tenant_id,
        compared.meter,
        compared.unit,
        compared.usage_quantity::numeric(38, 12) as usage_quantity,
        compared.cost_to_serve::numeric(18, 2) as cost_to_serve,
        compared.billed_amount::numeric(18, 2) as billed_amount,
        compared.margin::numeric(18, 2) as margin,
        compared.currency,
        round(
            compared.cost_to_serve / nullif(compared.usage_quantity, 0), 6
        )::numeric(24, 6) as cost_per_unit,
        round(
            compared.billed_amount / nullif(compared.usage_quantity, 0), 6
        )::numeric(24, 6) as billed_per_unit,
        case
            when compared.meter = '(all)'
                then round(
                    compared.cost_to_serve / nullif(compared.ingested_gb, 0), 6
                )
        end::numeric(24, 6) as cost_per_gb_ingested,
        case
            when compared.meter = '(all)'
                then round(
                    compared.billed_amount / nullif(compared.ingested_gb, 0), 6
                )
        end::numeric(24, 6) as billed_per_gb_ingested,
        (
            compared.usage_quantity - compared.week_ago_usage_quantity
        )::numeric(38, 12) as usage_wow_delta,
        (
            compared.cost_to_serve - compared.week_ago_cost_to_serve
        )::numeric(18, 2) as cost_wow_delta,
        round(
            (compared.cost_to_serve - compared.week_ago_cost_to_serve)
            / nullif(abs(compared.week_ago_cost_to_serve), 0) * 100,
            2
        )::numeric(14, 2) as cost_wow_percent,
        (
            compared.billed_amount - compared.week_ago_billed_amount
        )::numeric(18, 2) as billed_wow_delta,
        round(
            (compared.billed_amount - compared.week_ago_billed_amount)
            / nullif(abs(compared.week_ago_billed_amount), 0) * 100,
            2
        )::numeric(14, 2) as billed_wow_percent,
        (
            compared.margin
            - (
                compared.week_ago_billed_amount
                - compared.week_ago_cost_to_serve
            )
        )::numeric(18, 2) as margin_wow_delta,
        least(
            freshness.usage_through,
            (compared.trend_day + 1)::timestamp at time zone 'UTC'
        ) as usage_through,
        coalesce(
            freshness.usage_through
            >= (compared.trend_day + 1)::timestamp at time zone 'UTC',
            false
        ) as is_complete

    from compared

    cross join freshness

    where
        {{ window_months('compared.trend_day', 'date') }}
        -- days with usage known (a build without a window allocates a
        -- month's pool cost to the hours still to come)
        and compared.trend_day::timestamp at time zone 'UTC'
        < freshness.usage_through

    order by
        compared.trend_day,
        compared.scope_level,
        compared.scope_key,
        compared.meter

)

select * from final
