-- FOCUS BilledCost is what is invoiced: per tenant and month it adds up to the
-- invoice lines exactly, and cost-to-serve rows bill nothing. Returns offending
-- tenant-months and allocation rows.

with

focus_charges as (

    select * from {{ ref('fct_focus_charges') }}

),

invoice_lines as (

    select * from {{ ref('fct_invoice_lines') }}

),

billed as (

    select
        ("BillingPeriodStart" at time zone 'UTC')::date as invoice_month,
        "SubAccountId" as tenant_id,
        sum("BilledCost") as billed_cost

    from focus_charges

    where "x_ChargeSource" = 'invoice'

    group by invoice_month, tenant_id

),

invoiced as (

    select
        invoice_month,
        tenant_id,
        sum(amount) as amount

    from invoice_lines

    group by invoice_month, tenant_id

),

final as (

    select
        coalesce(billed.invoice_month, invoiced.invoice_month)
            as invoice_month,
        coalesce(billed.tenant_id, invoiced.tenant_id) as tenant_id,
        billed.billed_cost,
        invoiced.amount

    from billed

    full outer join invoiced
        on
            billed.invoice_month = invoiced.invoice_month
            and billed.tenant_id = invoiced.tenant_id

    where billed.billed_cost is distinct from invoiced.amount

    union all

    select
        ("BillingPeriodStart" at time zone 'UTC')::date as invoice_month,
        "SubAccountId" as tenant_id,
        "BilledCost" as billed_cost,
        null as amount

    from focus_charges

    where "x_ChargeSource" = 'allocation' and "BilledCost" <> 0

)

select * from final
