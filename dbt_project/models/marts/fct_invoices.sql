{{
    config(
        materialized='incremental',
        incremental_strategy='append',
        on_schema_change='fail',
        pre_hook="{{ delete_window() }}",
        post_hook="{{ analyze_after_large_write() }}",
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
        sum(amount)::numeric(18, 2) as total,
        currency,
        count(*)::integer as line_count

    from invoice_lines

    group by invoice_month, tenant_id, currency

)

select * from final
