-- Each invoice's total is exactly the sum of its lines, and every tenant-month
-- with lines has an invoice. Returns offending invoices.

with

invoices as (

    select * from {{ ref('fct_invoices') }}
    where {{ window_months('invoice_month', 'date') }}

),

invoice_lines as (

    select * from {{ ref('fct_invoice_lines') }}
    where {{ window_months('invoice_month', 'date') }}

),

line_totals as (

    select
        invoice_month,
        tenant_id,
        sum(amount) as line_total,
        count(*) as line_count

    from invoice_lines

    group by invoice_month, tenant_id

),

final as (

    select
        coalesce(invoices.invoice_month, line_totals.invoice_month)
            as invoice_month,
        coalesce(invoices.tenant_id, line_totals.tenant_id) as tenant_id,
        invoices.total,
        line_totals.line_total,
        invoices.line_count,
        line_totals.line_count as lines_found

    from invoices

    full outer join line_totals
        on
            invoices.invoice_month = line_totals.invoice_month
            and invoices.tenant_id = line_totals.tenant_id

    where
        invoices.total is distinct from line_totals.line_total
        or invoices.line_count is distinct from line_totals.line_count

)

select * from final
