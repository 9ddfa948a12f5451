-- The trend marts add up to the ledger marts to the cent. Per month, the
-- '(all)' rows of each org level (platform, organisation, business unit,
-- team, tenant) sum to the platform row; per complete month, to
-- fct_ledger_rollup_monthly's platform row, and each tenant's to its tenant
-- row; per month in progress, each tenant's to int_ledger_daily over the days
-- with usage known; the daily mart's days to the monthly mart. Returns
-- differences; looks only at the window's months.

with

monthly as (

    select * from {{ ref('fct_trends_monthly') }}
    where
        {{ window_months('trend_month', 'date') }}
        and meter = '(all)'
        and scope_level in (
            'platform', 'organisation', 'business_unit', 'team', 'tenant'
        )

),

daily as (

    select * from {{ ref('fct_trends_daily') }}
    where
        {{ window_months('trend_day', 'date') }}
        and meter = '(all)'
        and scope_level in (
            'platform', 'organisation', 'business_unit', 'team', 'tenant'
        )

),

ledger as (

    select * from {{ ref('fct_ledger_rollup_monthly') }}
    where {{ window_months('invoice_month', 'date') }}

),

ledger_daily as (

    select * from {{ ref('int_ledger_daily') }}
    where {{ window_months('ledger_day', 'date') }}

),

months as (

    select distinct
        trend_month,
        is_complete,
        usage_through

    from monthly

),

monthly_levels as (

    select
        monthly.trend_month,
        monthly.scope_level,
        months.is_complete,
        sum(monthly.cost_to_serve) as cost_to_serve,
        sum(monthly.billed_amount) as billed_amount

    from monthly

    inner join months
        on monthly.trend_month = months.trend_month

    group by monthly.trend_month, monthly.scope_level, months.is_complete

),

daily_levels as (

    select
        date_trunc('month', trend_day)::date as trend_month,
        scope_level,
        sum(cost_to_serve) as cost_to_serve,
        sum(billed_amount) as billed_amount

    from daily

    group by date_trunc('month', trend_day)::date, scope_level

),

ledger_platform as (

    select
        ledger.invoice_month as trend_month,
        ledger.cost_to_serve,
        ledger.billed

    from ledger

    inner join months
        on ledger.invoice_month = months.trend_month

    where ledger.level = 'platform' and months.is_complete

),

ledger_tenants as (

    select
        ledger.invoice_month as trend_month,
        ledger.tenant_id,
        ledger.cost_to_serve,
        ledger.billed

    from ledger

    inner join months
        on ledger.invoice_month = months.trend_month

    where ledger.level = 'tenant' and months.is_complete

),

trend_platform as (

    select * from monthly_levels
    where scope_level = 'platform'

),

complete_levels as (

    select * from monthly_levels
    where is_complete

),

complete_tenants as (

    select monthly.* from monthly
    inner join months
        on monthly.trend_month = months.trend_month
    where monthly.scope_level = 'tenant' and months.is_complete

),

tenants_in_progress as (

    select monthly.* from monthly
    inner join months
        on monthly.trend_month = months.trend_month
    where
        monthly.scope_level = 'tenant'
        and not months.is_complete
        and monthly.scope_key != '(platform)'

),

-- int_ledger_daily over the days with usage known, per tenant
tenants_so_far as (

    select
        months.trend_month,
        ledger_daily.tenant_id,
        sum(ledger_daily.cost_to_serve) as cost_to_serve,
        sum(ledger_daily.billed_amount) as billed_amount

    from months

    inner join ledger_daily
        on
            months.trend_month = ledger_daily.ledger_month
            and ledger_daily.ledger_day::timestamp at time zone 'UTC'
            < months.usage_through

    where not months.is_complete

    group by months.trend_month, ledger_daily.tenant_id

),

levels_vs_platform as (

    select
        monthly_levels.trend_month,
        monthly_levels.scope_level || ' vs platform' as scope,
        monthly_levels.cost_to_serve as trend_cost,
        trend_platform.cost_to_serve as ledger_cost,
        monthly_levels.billed_amount as trend_billed,
        trend_platform.billed_amount as ledger_billed

    from monthly_levels

    left join trend_platform
        on monthly_levels.trend_month = trend_platform.trend_month

),

levels_vs_ledger as (

    select
        coalesce(complete_levels.trend_month, ledger_platform.trend_month)
            as trend_month,
        complete_levels.scope_level as scope,
        complete_levels.cost_to_serve as trend_cost,
        ledger_platform.cost_to_serve as ledger_cost,
        complete_levels.billed_amount as trend_billed,
        ledger_platform.billed as ledger_billed

    from complete_levels

    full outer join ledger_platform
        on complete_levels.trend_month = ledger_platform.trend_month

),

tenants_vs_ledger as (

    select
        coalesce(complete_tenants.trend_month, ledger_tenants.trend_month)
            as trend_month,
        coalesce(complete_tenants.scope_key, ledger_tenants.tenant_id)
            as scope,
        complete_tenants.cost_to_serve as trend_cost,
        ledger_tenants.cost_to_serve as ledger_cost,
        complete_tenants.billed_amount as trend_billed,
        ledger_tenants.billed as ledger_billed

    from complete_tenants

    full outer join ledger_tenants
        on
            complete_tenants.trend_month = ledger_tenants.trend_month
            and complete_tenants.scope_key = ledger_tenants.tenant_id

),

tenants_vs_ledger_so_far as (

    select
        coalesce(tenants_in_progress.trend_month, tenants_so_far.trend_month)
            as trend_month,
        coalesce(tenants_in_progress.scope_key, tenants_so_far.tenant_id)
            as scope,
        tenants_in_progress.cost_to_serve as trend_cost,
        tenants_so_far.cost_to_serve as ledger_cost,
        tenants_in_progress.billed_amount as trend_billed,
        tenants_so_far.billed_amount as ledger_billed

    from tenants_in_progress

    full outer join tenants_so_far
        on
            tenants_in_progress.trend_month = tenants_so_far.trend_month
            and tenants_in_progress.scope_key = tenants_so_far.tenant_id

),

days_vs_months as (

    select
        coalesce(daily_levels.trend_month, monthly_levels.trend_month)
            as trend_month,
        'days of '
        || coalesce(daily_levels.scope_level, monthly_levels.scope_level)
            as scope,
        daily_levels.cost_to_serve as trend_cost,
        monthly_levels.cost_to_serve as ledger_cost,
        daily_levels.billed_amount as trend_billed,
        monthly_levels.billed_amount as ledger_billed

    from daily_levels

    full outer join monthly_levels
        on
            daily_levels.trend_month = monthly_levels.trend_month
            and daily_levels.scope_level = monthly_levels.scope_level

),

compared as (

    select * from levels_vs_platform
    union all
    select * from levels_vs_ledger
    union all
    select * from tenants_vs_ledger
    union all
    select * from tenants_vs_ledger_so_far
    union all
    select * from days_vs_months

),

final as (

    select * from compared
    where
        trend_cost is distinct from ledger_cost
        or trend_billed is distinct from ledger_billed

)

select * from final
