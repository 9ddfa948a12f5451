{#-
    fct_trends_daily's series below the tenant, with its columns: scope_level
    'source' (scope_key 'tenant / source', under the tenant's organisation,
    business unit and team) and 'label' (scope_key 'key=value', across
    tenants), per meter and '(all)' meters, from the source and label
    showback. Same unit costs, same-weekday-last-week deltas and
    usage_through / is_complete as fct_trends_daily; days after usage_through
    are left out.

    A view, like the showback it reads (a month in progress re-splits its
    billed amount every hour, so a table would rewrite the month's source and
    label rows each hour): read one tenant, label or month at a time.
-#}
{{ config(materialized='view') }}

with

sources as (

    select * from {{ ref('fct_showback_sources_daily') }}

),

labels as (

    select * from {{ ref('fct_showback_labels_daily') }}

),

tenants as (

    -- named columns: a security_invoker view, and readers may not select billing_email
    select
        tenant_id,
        organisation,
        business_unit,
        team
    from {{ ref('dim_tenants') }}

),

freshness as (

    select {{ usage_through() }} as usage_through

),

scoped as (

    select
        sources.ledger_day as trend_day,
        'source' as scope_level,
        sources.tenant_id || ' / ' || sources.source as scope_key,
        tenants.organisation,
        tenants.business_unit,
        tenants.team,
        sources.tenant_id,
        sources.meter,
        sources.unit,
        sources.usage_quantity,
        sources.cost_to_serve,
        sources.billed_amount,
        sources.currency

    from sources

    left join tenants
        on sources.tenant_id = tenants.tenant_id

    union all

    select
        ledger_day as trend_day,
        'label' as scope_level,
        label_key || '=' || label_value as scope_key,
        null as organisation,
        null as business_unit,
        null as team,
        null as tenant_id,
        meter,
        min(unit) as unit,
        sum(usage_quantity) as usage_quantity,
        sum(cost_to_serve) as cost_to_serve,
        sum(billed_amount) as billed_amount,
        currency

    from labels

    group by ledger_day, label_key, label_value, meter, currency

),

with_all as (

    select * from scoped

    union all

    select
        trend_day,
        scope_level,
        scope_key,
        min(organisation) as organisation,
        min(business_unit) as business_unit,
        min(team) as team,
        min(tenant_id) as tenant_id,
        '(all)' as meter,
        null as unit,
        null as usage_quantity,
        sum(cost_to_serve) as cost_to_serve,
        sum(billed_amount) as billed_amount,
        currency

    from scoped

    group by trend_day, scope_level, scope_key, currency

),

compared as (

    select
        *,
        billed_amount - cost_to_serve as margin,
        sum(usage_quantity) filter (where meter = 'ingested_gb') over (
            partition by trend_day, scope_level, scope_key, currency
        ) as ingested_gb,
        sum(usage_quantity) over (
            partition by scope_level, scope_key, meter, currency
            order by trend_day
            range between interval '7 days' preceding
            and interval '7 days' preceding
        ) as week_ago_usage_quantity,
        sum(cost_to_serve) over (
            partition by scope_level, scope_key, meter, currency
            order by trend_day
            range between interval '7 days' preceding
            and interval '7 days' preceding
        ) as week_ago_cost_to_serve,
        sum(billed_amount) over (
            partition by scope_level, scope_key, meter, currency
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
        compared.trend_day::timestamp at time zone 'UTC'
        < freshness.usage_through

)

select * from final
