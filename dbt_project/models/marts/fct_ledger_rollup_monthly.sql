{#-
    The two ledgers rolled up the org hierarchy, per calendar month: one row per
    tenant, team, business unit and organisation, and one for the whole platform
    (level 'platform'). Cost the platform keeps (idle, unallocated) rolls up
    under the organisation '(platform)'. margin_percent = margin / billed, null
    when nothing was billed.
-#}
with

ledger as (

    select * from {{ ref('fct_ledger_monthly') }}
    where {{ window_months('invoice_month', 'date') }}

),

labelled as (

    select
        invoice_month,
        currency,
        coalesce(organisation, '(platform)') as organisation,
        coalesce(business_unit, '(platform)') as business_unit,
        coalesce(team, '(platform)') as team,
        coalesce(tenant_id, '(platform)') as tenant_id,
        cost_to_serve,
        billed,
        margin

    from ledger

),

rolled_up as (

    select
        invoice_month,
        currency,
        case
            when grouping(organisation) = 1 then 'platform'
            when grouping(business_unit) = 1 then 'organisation'
            when grouping(team) = 1 then 'business_unit'
            when grouping(tenant_id) = 1 then 'team'
            else 'tenant'
        end as level,
        organisation,
        business_unit,
        team,
        tenant_id,
        sum(cost_to_serve) as cost_to_serve,
        sum(billed) as billed,
        sum(margin) as margin

    from labelled

    group by
        invoice_month,
        currency,
        rollup (organisation, business_unit, team, tenant_id)

),

final as (

    select
        invoice_month,
        level,
        organisation,
        business_unit,
        team,
        tenant_id,
        cost_to_serve::numeric(18, 2) as cost_to_serve,
        billed::numeric(18, 2) as billed,
        margin::numeric(18, 2) as margin,
        round(margin / nullif(billed, 0) * 100, 2)::numeric(9, 2)
            as margin_percent,
        currency

    from rolled_up

)

select * from final
