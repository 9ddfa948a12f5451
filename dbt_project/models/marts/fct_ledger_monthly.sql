{#-
    The two ledgers side by side, per tenant, ledger item and calendar month:
    cost to serve (infrastructure cost allocated to the tenant: showback) and
    the price billed (chargeback), and the margin between them.

    ledger_item is where a figure comes from:
    - a meter: allocations whose driver is that meter, and the invoice lines of
      that meter;
    - 'shared': allocations with no driver meter (direct, fixed, even);
    - 'idle': idle capacity redistributed to the tenant;
    - 'contract': the commitment true-up and the overage uplift.
    Cost the platform keeps (idle capacity it does not pass on, pool-hours no
    tenant used) is on rows with tenant_id null, so that the ledger's cost to
    serve adds up to the pools' cost exactly.
-#}
{{ config(indexes=[{'columns': ['invoice_month', 'tenant_id']}]) }}

with

allocations as (

    select * from {{ ref('fct_cost_allocations_monthly') }}
    where {{ window_months('cost_month', 'date') }}

),

invoice_lines as (

    select * from {{ ref('fct_invoice_lines') }}
    where {{ window_months('invoice_month', 'date') }}

),

tenants as (

    select * from {{ ref('dim_tenants') }}

),

cost_to_serve as (

    select
        cost_month as invoice_month,
        tenant_id,
        case
            when tenant_id is null then cost_type
            when cost_type = 'idle' then 'idle'
            when driver_meter is null then 'shared'
            else driver_meter
        end as ledger_item,
        currency,
        sum(allocated_cost) as cost_to_serve

    from allocations

    group by 1, 2, 3, 4

),

billed as (

    select
        invoice_month,
        tenant_id,
        coalesce(meter, 'contract') as ledger_item,
        currency,
        sum(amount) as billed

    from invoice_lines

    group by 1, 2, 3, 4

),

ledger as (

    select
        coalesce(cost_to_serve.invoice_month, billed.invoice_month)
            as invoice_month,
        coalesce(cost_to_serve.tenant_id, billed.tenant_id) as tenant_id,
        coalesce(cost_to_serve.ledger_item, billed.ledger_item)
            as ledger_item,
        coalesce(cost_to_serve.currency, billed.currency) as currency,
        coalesce(cost_to_serve.cost_to_serve, 0) as cost_to_serve,
        coalesce(billed.billed, 0) as billed

    from cost_to_serve

    full outer join billed
        on
            cost_to_serve.invoice_month = billed.invoice_month
            and cost_to_serve.tenant_id = billed.tenant_id
            and cost_to_serve.ledger_item = billed.ledger_item
            and cost_to_serve.currency = billed.currency

),

final as (

    select
        ledger.invoice_month,
        ledger.tenant_id,
        tenants.tenant_name,
        tenants.organisation,
        tenants.business_unit,
        tenants.team,
        ledger.ledger_item,
        ledger.cost_to_serve::numeric(18, 2) as cost_to_serve,
        ledger.billed::numeric(18, 2) as billed,
        (ledger.billed - ledger.cost_to_serve)::numeric(18, 2) as margin,
        ledger.currency

    from ledger

    left join tenants
        on ledger.tenant_id = tenants.tenant_id

)

select * from final
