{#-
    Every pool-hour's cost allocated by the rule of the pool version in force
    (docs/COST_ENGINE.md §1, §3), in whole cents that add up exactly:

    1. pool cost -> used and idle cost (fct_cost_pools_hourly, by utilisation);
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
{{
    config(
        materialized='incremental',
        incremental_strategy='append',
        on_schema_change='fail',
        pre_hook="{{ delete_window() }}",
        post_hook="{{ analyze_after_large_write() }}",
        indexes=[{'columns': ['hour_start']}],
    )
}}

with

pool_hours as (

    select * from {{ ref('fct_cost_pools_hourly') }}
    where {{ window_hours('hour_start') }}

),

usage as (

    select * from {{ ref('fct_usage_hourly') }}
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

cost_hours as (

    -- one row per cost to split over tenants
    select * from component_hours

    union all

    select * from redistributed_idle_hours

),

active_hours as (

    select distinct hour_start

    from cost_hours

    where basis = 'active'

),

active_tenants as (

    -- tenants with any usage in an hour that has an even part
    select distinct
        usage.hour_start,
        usage.tenant_id

    from usage

    inner join active_hours
        on usage.hour_start = active_hours.hour_start

),

tenant_weights as (

    -- 4. each cost's tenants and their weights; a left join keeps a cost
    -- without any tenant as one row with tenant_id null
    select
        cost_hours.*,
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
        cost_hours.*,
        active_tenants.tenant_id,
        case when active_tenants.tenant_id is not null then 1 end as weight

    from cost_hours

    left join active_tenants
        on cost_hours.hour_start = active_tenants.hour_start

    where cost_hours.basis = 'active'

    union all

    select
        cost_hours.*,
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

weighted as (

    select
        *,
        sum(weight) over (
            partition by hour_start, pool, part, component
        ) as weight_total

    from tenant_weights

),

allocated as (

    select
        *,
        coalesce(
            {{ largest_remainder(
                amount='cost',
                weight='weight',
                total_weight='weight_total',
                partition_by='hour_start, pool, part, component',
                order_by='tenant_id collate "C"',
            ) }},
            cost
        ) as allocated_cost

    from weighted

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
        hour_start,
        pool,
        rule_valid_from,
        part,
        method,
        component,
        case
            when tenant_id is null then 'unallocated' else cost_type
        end as cost_type,
        tenant_id,
        driver_meter,
        coalesce(weight, 0)::numeric(38, 12) as driver_quantity,
        coalesce(weight_total, 0)::numeric(38, 12) as driver_total,
        coalesce(round(weight / weight_total, 12), 1)::numeric(38, 12)
            as ratio,
        case
            when method in ('proportional', 'activity_based')
                then round(cost / weight_total, 12)
        end::numeric(38, 12) as unit_cost,
        allocated_cost::numeric(18, 2) as allocated_cost,
        currency

    from allocated

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
