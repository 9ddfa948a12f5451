{#-
    One invoice per tenant and calendar month: its lines summed, exactly.
    usage_total = list_subtotal - discount_total (the usage and free-allowance
    lines); total = usage_total + commitment_true_up + overage_uplift = the sum
    of every line's amount.
-#}
{{
    config(
        indexes=[
            {'columns': ['invoice_month', 'tenant_id'], 'unique': true},
        ],
    )
}}

with

invoice_lines as (

    select * from {{ ref('fct_invoice_lines') }}
    where {{ window_months('invoice_month', 'date') }}

),

final as (

    select
        invoice_month,
        tenant_id,
        coalesce(
            sum(list_amount) filter (
                where line_type in ('usage', 'free_allowance')
            ),
            0
        )::numeric(18, 2) as list_subtotal,
        sum(discount_amount)::numeric(18, 2) as discount_total,
        coalesce(
            sum(amount) filter (
                where line_type in ('usage', 'free_allowance')
            ),
            0
        )::numeric(18, 2) as usage_total,
        coalesce(
            sum(amount) filter (where line_type = 'commitment_true_up'), 0
        )::numeric(18, 2) as commitment_true_up,
        coalesce(
            sum(amount) filter (where line_type = 'overage_uplift'), 0
        )::numeric(18, 2) as overage_uplift,
        sum(amount)::numeric(18, 2) as total,
        currency,
        count(*)::integer as line_count

    from invoice_lines

    group by invoice_month, tenant_id, currency

)

select * from final
