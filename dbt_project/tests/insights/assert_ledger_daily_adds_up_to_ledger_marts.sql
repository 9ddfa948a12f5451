-- The daily ledger adds up exactly, per tenant and month, to the monthly
-- marts: cost to serve to fct_ledger_monthly and to the tenant's allocations
-- (fct_cost_allocations_monthly), billed to fct_invoices' total, and per
-- meter billed to the ledger item ('(contract)' = 'contract') and cost to the
-- allocations of the driver meter ('(shared)' = none). Returns differences;
-- looks only at the window's months.

with

ledger_daily as (

    select * from {{ ref('int_ledger_daily') }}
    where {{ window_months('ledger_day', 'date') }}

),

ledger_monthly as (

    select * from {{ ref('fct_ledger_monthly') }}
    where
        {{ window_months('invoice_month', 'date') }}
        and tenant_id is not null

),

invoices as (

    select * from {{ ref('fct_invoices') }}
    where {{ window_months('invoice_month', 'date') }}

),

allocations as (

    select * from {{ ref('fct_cost_allocations_monthly') }}
    where
        {{ window_months('cost_month', 'date') }}
        and tenant_id is not null

),

daily_by_meter as (

    select
        ledger_month,
        tenant_id,
        meter,
        sum(cost_to_serve) as cost_to_serve,
        sum(billed_amount) as billed_amount

    from ledger_daily

    group by ledger_month, tenant_id, meter

),

billed_by_meter as (

    select
        invoice_month as ledger_month,
        tenant_id,
        case
            when ledger_item = 'contract' then '(contract)'
            else ledger_item
        end as meter,
        sum(billed) as billed_amount

    from ledger_monthly

    where billed != 0

    group by
        invoice_month,
        tenant_id,
        case
            when ledger_item = 'contract' then '(contract)'
            else ledger_item
        end

),

cost_by_meter as (

    select
        cost_month as ledger_month,
        tenant_id,
        coalesce(driver_meter, '(shared)') as meter,
        sum(allocated_cost) as cost_to_serve

    from allocations

    group by cost_month, tenant_id, coalesce(driver_meter, '(shared)')

),

by_meter as (

    select
        coalesce(d.ledger_month, b.ledger_month, c.ledger_month) as ledger_month,
        coalesce(d.tenant_id, b.tenant_id, c.tenant_id) as tenant_id,
        coalesce(d.meter, b.meter, c.meter) as meter,
        'meter' as compared,
        coalesce(d.cost_to_serve, 0) as daily_cost,
        coalesce(c.cost_to_serve, 0) as monthly_cost,
        coalesce(d.billed_amount, 0) as daily_billed,
        coalesce(b.billed_amount, 0) as monthly_billed

    from daily_by_meter as d

    full outer join billed_by_meter as b
        on
            d.ledger_month = b.ledger_month
            and d.tenant_id = b.tenant_id
            and d.meter = b.meter

    full outer join cost_by_meter as c
        on
            coalesce(d.ledger_month, b.ledger_month) = c.ledger_month
            and coalesce(d.tenant_id, b.tenant_id) = c.tenant_id
            and coalesce(d.meter, b.meter) = c.meter

),

daily_by_tenant as (

    select
        ledger_month,
        tenant_id,
        sum(cost_to_serve) as cost_to_serve,
        sum(billed_amount) as billed_amount

    from ledger_daily

    group by ledger_month, tenant_id

),

ledger_by_tenant as (

    select
        invoice_month as ledger_month,
        tenant_id,
        sum(cost_to_serve) as cost_to_serve

    from ledger_monthly

    group by invoice_month, tenant_id

),

by_tenant as (

    select
        coalesce(d.ledger_month, l.ledger_month, i.invoice_month) as ledger_month,
        coalesce(d.tenant_id, l.tenant_id, i.tenant_id) as tenant_id,
        '(tenant)' as meter,
        'tenant' as compared,
        coalesce(d.cost_to_serve, 0) as daily_cost,
        coalesce(l.cost_to_serve, 0) as monthly_cost,
        coalesce(d.billed_amount, 0) as daily_billed,
        coalesce(i.total, 0) as monthly_billed

    from daily_by_tenant as d

    full outer join ledger_by_tenant as l
        on
            d.ledger_month = l.ledger_month
            and d.tenant_id = l.tenant_id

    full outer join invoices as i
        on
            coalesce(d.ledger_month, l.ledger_month) = i.invoice_month
            and coalesce(d.tenant_id, l.tenant_id) = i.tenant_id

),

final as (

    select * from by_meter
    where daily_cost != monthly_cost or daily_billed != monthly_billed

    union all

    select * from by_tenant
    where daily_cost != monthly_cost or daily_billed != monthly_billed

)

select * from final
