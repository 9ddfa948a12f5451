{#-
    Each pool-hour's cost allocated to tenants, as BI and the mart checks read
    it: a view of int_cost_allocations_hourly, the allocation engine's output
    (windowed). A plain select (see _marts.yml).
-#}
{{ config(materialized='view') }}

select
    hour_start,
    pool,
    rule_valid_from,
    part,
    method,
    component,
    cost_type,
    tenant_id,
    driver_meter,
    driver_quantity,
    driver_total,
    ratio,
    unit_cost,
    allocated_cost,
    currency

from {{ ref('int_cost_allocations_hourly') }}
