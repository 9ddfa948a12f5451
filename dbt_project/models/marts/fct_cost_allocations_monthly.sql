{#-
    fct_cost_allocations_hourly summed per UTC calendar month, for BI, the
    ledger and FOCUS: one row per month, tenant (null for idle kept by the
    platform and unallocated cost), pool, part, component and cost_type. When a
    new version of the pool starts inside the month, its hours add to the same
    row; rule_valid_from, method and driver_meter are the latest version's.

    A windowed run rebuilds the months the window touches from the daily sums
    (int_cost_allocations_daily), so an hourly run never re-reads a month of
    hourly rows.
-#}
{{ config(indexes=[{'columns': ['cost_month', 'tenant_id']}]) }}

with

allocations as (

    select * from {{ ref('int_cost_allocations_daily') }}
    where {{ window_months('cost_day', 'date') }}

),

monthly as (

    select
        date_trunc('month', cost_day)::date as cost_month,
        tenant_id,
        pool,
        part,
        component,
        cost_type,
        max(rule_valid_from) as rule_valid_from,
        (array_agg(method order by rule_valid_from desc))[1] as method,
        (array_agg(driver_meter order by rule_valid_from desc))[1]
            as driver_meter,
        (array_agg(currency order by rule_valid_from desc))[1] as currency,
        sum(driver_quantity) filter (where driver_meter is not null)
            as driver_quantity,
        sum(allocated_cost) as allocated_cost,
        sum(hour_count) as hour_count

    from allocations

    group by
        date_trunc('month', cost_day)::date,
        tenant_id,
        pool,
        part,
        component,
        cost_type

),

final as (

    select
        cost_month,
        tenant_id,
        pool,
        part,
        component,
        cost_type,
        rule_valid_from,
        method,
        driver_meter,
        driver_quantity::numeric(38, 12) as driver_quantity,
        allocated_cost::numeric(18, 2) as allocated_cost,
        currency,
        hour_count::integer as hour_count

    from monthly

)

select * from final
