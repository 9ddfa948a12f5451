{#-
    Cost of each pool per UTC hour, as BI and the mart checks read it: a view
    of int_cost_pools_hourly, where the monthly cost is spread over the hours
    and split into used and idle cost (windowed). A plain select (see _marts.yml).
-#}
{{ config(materialized='view') }}

select
    pool,
    hour_start,
    pool_cost,
    used_cost,
    idle_cost,
    capacity_meter,
    capacity,
    capacity_used,
    utilisation,
    currency,
    rule_valid_from,
    monthly_cost,
    hours_in_month,
    idle_policy

from {{ ref('int_cost_pools_hourly') }}
