{#-
    The current recommendations (chargeback.insights.recommend): what to
    change, the evidence and the monthly saving, each the period's invoice
    re-priced by the pricing engine with the change, less the invoice. A view
    over insights.recommendations, which Python writes once a month; rows no
    longer current are left out, dismissed ones kept with their reason.
-#}
{{ config(materialized='view') }}

with

recommendations as (

    select * from {{ source('insights', 'recommendations') }}

),

final as (

    select
        recommendation_id,
        period as invoice_month,
        tenant_id,
        kind,
        target,
        change,
        title,
        evidence,
        confidence,
        currency,
        invoice_total,
        total_after,
        saving,
        status,
        status_by,
        status_reason,
        status_at,
        computed_at

    from recommendations

    where current

)

select * from final
