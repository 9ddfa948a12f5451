{#-
    Metered usage per tenant, meter and UTC hour, as BI and the invoice
    renderer read it: a view of int_usage_hourly, where it is computed and
    kept (windowed). A plain select (see _marts.yml).
-#}
{{ config(materialized='view') }}

select
    tenant_id,
    meter,
    hour_start,
    quantity,
    unit,
    kind,
    snapshot_count,
    last_learned_at

from {{ ref('int_usage_hourly') }}
