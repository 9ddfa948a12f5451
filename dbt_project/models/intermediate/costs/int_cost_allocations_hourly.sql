{#-
    Every pool-hour's cost allocated by the rule of the pool version in force
    (docs/COST_ENGINE.md §1, §3), in whole cents that add up exactly:

    1. pool cost -> used and idle cost (int_cost_pools_hourly, by utilisation);
    2. used cost -> the rule's parts, by share_percent;
    3. each part -> its components, by weight (a proportional mix: one per
       driver meter; activity_based: one per activity; else one component);
    4. each component -> tenants, by its basis: usage of the driver meter in
       the hour (proportional, activity_based), 1 per tenant active in the
       hour (even), or the configured percentages (fixed, direct);
    5. idle cost -> one row kept by the platform (tenant null), or
       redistributed over the tenants by their usage of the capacity meter.

    Every split is the largest_remainder macro (ties to the lower key, tenants
    compared byte by byte), so each level adds up to the level above. A
    component whose basis has no tenant in the hour keeps its cost on one row
    with tenant null and cost_type 'unallocated'.

    Activity-based costing: unit cost = activity cost / the activity's volume,
    and a tenant's cost = volume x unit cost, i.e. its share of the activity
    cost by volume, rounded by largest remainder so that it adds up.
-#}
{#- enable_nestloop off for this model's transaction: every join here is an
    equi-join of a few thousand costs with millions of tenant rows, and a nested
    loop picked on a low estimate (config.* tables without statistics, CTE
    outputs) would scan the tenant rows once per cost. #}
{{
    config(
        pre_hook="set local enable_nestloop = off",
        indexes=[{'columns': ['hour_start']}],
    )
}}

with

-- not materialized: referenced several times, these are still read from their
-- tables, so the planner keeps the tables' statistics for the joins below
pool_hours as not materialized (

    select * from {{ ref('int_cost_pools_hourly') }}
    where {{ window_hours('hour_start') }}

),

usage as not materialized (

    select * from {{ ref('int_usage_hourly') }}
    where {{ window_hours('hour_start') }} and quantity > 0

),

rules as (

    select * from {{ ref('stg_config__allocation_rules') }}

),

components as (

    select * from {{ ref('stg_config__allocation_components') }}

),

fixed_shares as (

    select * from {{ ref('stg_config__allocation_fixed_shares') }}

),

rule_parts as (

    select
        *,
        sum(share_percent) over (partition by pool, valid_from) as share_total

    from rules

),

part_components as (

    select
        *,
        sum(weight) over (partition by pool, valid_from, part) as weight_total

    from components

),

part_hours as (

    -- 2. the used cost of each pool-hour over the rule's parts
    select
        pool_hours.hour_start,
        pool_hours.pool,
        pool_hours.rule_valid_from,
        pool_hours.currency,
        rule_parts.part,
        rule_parts.method,
        {{ largest_remainder(
            amount='pool_hours.used_cost',
            weight='rule_parts.share_percent',
            total_weight='rule_parts.share_total',
            partition_by='pool_hours.hour_start, pool_hours.pool',
            order_by='rule_parts.part',
        ) }} as part_cost

    from pool_hours

    inner join rule_parts
        on
            pool_hours.pool = rule_parts.pool
            and pool_hours.rule_valid_from = rule_parts.valid_from

),

component_hours as (

    -- 3. each part over its components
    select
        part_hours.hour_start,
        part_hours.pool,
        part_hours.rule_valid_from,
        part_hours.currency,
        part_hours.part,
        part_hours.method,
        part_components.component,
        'allocated' as cost_type,
        part_components.basis,
        part_components.meter as driver_meter,
        {{ largest_remainder(
            amount='part_hours.part_cost',
            weight='part_components.weight',
            total_weight='part_components.weight_total',
            partition_by='part_hours.hour_start, part_hours.pool, part_hours.part',
            order_by='part_components.component collate "C"',
        ) }} as cost

    from part_hours

    inner join part_components
        on
            part_hours.pool = part_components.pool
            and part_hours.rule_valid_from = part_components.valid_from
            and part_hours.part = part_components.part

),

redistributed_idle_hours as (

    -- 5. idle cost to redistribute by usage of the capacity meter
    select
        hour_start,
        pool,
        rule_valid_from,
        currency,
        0 as part,
        'idle' as method,
        'idle' as component,
        'idle' as cost_type,
        'usage' as basis,
        capacity_meter as driver_meter,
        idle_cost as cost

    from pool_hours

    where capacity_meter is not null and idle_policy = 'redistribute'

),

costs as (

    select * from component_hours

    union all

    select * from redistributed_idle_hours

),

meter_totals as (

    select
        hour_start,
        meter,
        sum(quantity) as quantity

    from usage

    group by hour_start, meter

),

active_hours as (

    select distinct hour_start

    from costs

    where basis = 'active'

),

active_tenants as (

    -- tenants with any usage in an hour that has an even part (no even
    -- part, no scan: the join's hash side is empty)
    select distinct
        usage.hour_start,
        usage.tenant_id

    from usage

    inner join active_hours
        on usage.hour_start = active_hours.hour_start

),

active_counts as (

    select
        hour_start,
        count(*) as tenants

    from active_tenants

    group by hour_start

),

fixed_totals as (

    select
        pool,
        valid_from,
        part,
        sum(percent) as percent

    from fixed_shares

    group by pool, valid_from, part

),

cost_hours as (

    -- one row per cost to split over tenants, numbered, with the sum of the
    -- weights it is split by (computed on the small side, so the tenant rows
    -- below need no window of their own for it)
    select
        row_number() over (
            order by costs.hour_start, costs.pool, costs.part, costs.component
        ) as cost_id,
        costs.*,
        case costs.basis
            when 'usage' then meter_totals.quantity
            when 'active' then active_counts.tenants
            when 'fixed' then fixed_totals.percent
        end as weight_total,
        case
            when costs.method in ('proportional', 'activity_based')
                then round(costs.cost / meter_totals.quantity, 12)
        end as unit_cost

    from costs

    left join meter_totals
        on
            costs.basis = 'usage'
            and costs.hour_start = meter_totals.hour_start
            and costs.driver_meter = meter_totals.meter

    left join active_counts
        on
            costs.basis = 'active'
            and costs.hour_start = active_counts.hour_start

    left join fixed_totals
        on
            costs.basis = 'fixed'
            and costs.pool = fixed_totals.pool
            and costs.rule_valid_from = fixed_totals.valid_from
            and costs.part = fixed_totals.part

),

tenant_weights as (

    -- 4. each cost's tenants and their weights, as narrow rows (this is the
    -- large relation); a left join keeps a cost without any tenant as one row
    -- with tenant_id null
    select
        cost_hours.cost_id,
        cost_hours.cost,
        cost_hours.weight_total,
        usage.tenant_id,
        usage.quantity as weight

    from cost_hours

    left join usage
        on
            cost_hours.hour_start = usage.hour_start
            and cost_hours.driver_meter = usage.meter

    where cost_hours.basis = 'usage'

    union all

    select
        cost_hours.cost_id,
        cost_hours.cost,
        cost_hours.weight_total,
        active_tenants.tenant_id,
        case when active_tenants.tenant_id is not null then 1 end as weight

    from cost_hours

    left join active_tenants
        on cost_hours.hour_start = active_tenants.hour_start

    where cost_hours.basis = 'active'

    union all

    select
        cost_hours.cost_id,
        cost_hours.cost,
        cost_hours.weight_total,
        fixed_shares.tenant_id,
        fixed_shares.percent as weight

    from cost_hours

    left join fixed_shares
        on
            cost_hours.pool = fixed_shares.pool
            and cost_hours.rule_valid_from = fixed_shares.valid_from
            and cost_hours.part = fixed_shares.part

    where cost_hours.basis = 'fixed'

),

allocated as (

    select
        cost_id,
        tenant_id,
        weight,
        coalesce(
            {{ largest_remainder(
                amount='cost',
                weight='weight',
                total_weight='weight_total',
                partition_by='cost_id',
                order_by='tenant_id collate "C"',
            ) }},
            cost
        ) as allocated_cost

    from tenant_weights

),

kept_idle as (

    -- 5. idle cost kept by the platform: one visible row per pool-hour
    select
        hour_start,
        pool,
        rule_valid_from,
        0 as part,
        'idle' as method,
        'idle' as component,
        'idle' as cost_type,
        null::text as tenant_id,
        capacity_meter as driver_meter,
        capacity - least(capacity_used, capacity) as driver_quantity,
        capacity as driver_total,
        round(
            (capacity - least(capacity_used, capacity)) / capacity, 12
        ) as ratio,
        null::numeric as unit_cost,
        idle_cost as allocated_cost,
        currency

    from pool_hours

    where capacity_meter is not null and idle_policy = 'platform'

),

final as (

    select
        cost_hours.hour_start,
        cost_hours.pool,
        cost_hours.rule_valid_from,
        cost_hours.part,
        cost_hours.method,
        cost_hours.component,
        case
            when allocated.tenant_id is null then 'unallocated'
            else cost_hours.cost_type
        end as cost_type,
        allocated.tenant_id,
        cost_hours.driver_meter,
        coalesce(allocated.weight, 0)::numeric(38, 12) as driver_quantity,
        coalesce(cost_hours.weight_total, 0)::numeric(38, 12) as driver_total,
        coalesce(
            round(allocated.weight / cost_hours.weight_total, 12), 1
        )::numeric(38, 12) as ratio,
        cost_hours.unit_cost::numeric(38, 12) as unit_cost,
        allocated.allocated_cost::numeric(18, 2) as allocated_cost,
        cost_hours.currency

    from allocated

    inner join cost_hours
        on allocated.cost_id = cost_hours.cost_id

    union all

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
        driver_quantity::numeric(38, 12) as driver_quantity,
        driver_total::numeric(38, 12) as driver_total,
        ratio::numeric(38, 12) as ratio,
        unit_cost::numeric(38, 12) as unit_cost,
        allocated_cost::numeric(18, 2) as allocated_cost,
        currency

    from kept_idle

)

select * from final
