{#-
    Metered usage per tenant, meter and UTC hour, as BI and the invoice
    renderer read it: a view of int_usage_hourly, where it is computed and
    kept (windowed incremental).

    A plain select, no CTEs: PostgreSQL pushes filters through it to the
    table's indexes, and the view stays simple (auto-updatable) so that
    what reads or fixes the mart needs no knowledge of the table.
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
