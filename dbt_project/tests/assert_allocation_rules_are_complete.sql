-- Every cost-pool version has an allocation rule that can allocate all of its
-- cost: parts summing to 100 %, each part with components of the basis its
-- method needs, fixed shares summing to 100 % exactly where the method needs
-- them (one tenant for direct), capacity meter and capacity set together, and
-- no rule rows without a pool version. The configuration loader validates the
-- same; this keeps a hand-edited config.* from losing cents silently. Returns
-- one row per problem.

with

cost_pools as (

    select * from {{ ref('stg_config__cost_pools') }}

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

rule_totals as (

    select
        cost_pools.pool,
        cost_pools.valid_from,
        sum(rules.share_percent) as share_total

    from cost_pools

    left join rules
        on
            cost_pools.pool = rules.pool
            and cost_pools.valid_from = rules.valid_from

    group by cost_pools.pool, cost_pools.valid_from

),

fixed_totals as (

    select
        pool,
        valid_from,
        part,
        sum(percent) as fixed_total,
        count(*) as fixed_count

    from fixed_shares

    group by pool, valid_from, part

),

part_checks as (

    select
        rules.pool,
        rules.valid_from,
        rules.part,
        rules.method,
        fixed_totals.fixed_total,
        coalesce(fixed_totals.fixed_count, 0) as fixed_count,
        count(components.component) as component_count,
        bool_and(
            components.basis = case
                when rules.method in ('proportional', 'activity_based')
                    then 'usage'
                when rules.method = 'even' then 'active'
                else 'fixed'
            end
        ) as bases_fit_method

    from rules

    left join components
        on
            rules.pool = components.pool
            and rules.valid_from = components.valid_from
            and rules.part = components.part

    left join fixed_totals
        on
            rules.pool = fixed_totals.pool
            and rules.valid_from = fixed_totals.valid_from
            and rules.part = fixed_totals.part

    group by
        rules.pool,
        rules.valid_from,
        rules.part,
        rules.method,
        fixed_totals.fixed_total,
        fixed_totals.fixed_count

),

problems as (

    select
        pool,
        valid_from,
        null::integer as part,
        'parts sum to ' || coalesce(share_total::text, 'nothing')
        || ' %, not 100 %' as problem

    from rule_totals

    where share_total is distinct from 100

    union all

    select
        pool,
        valid_from,
        null::integer as part,
        'capacity_meter and capacity_per_hour must be set together' as problem

    from cost_pools

    where (capacity_meter is null) <> (capacity_per_hour is null)

    union all

    select
        pool,
        valid_from,
        part,
        'part has no components' as problem

    from part_checks

    where component_count = 0

    union all

    select
        pool,
        valid_from,
        part,
        'a component''s basis does not fit method ' || method as problem

    from part_checks

    where not bases_fit_method

    union all

    select
        pool,
        valid_from,
        part,
        method || ' part: fixed shares sum to '
        || coalesce(fixed_total::text, 'nothing') || ' over '
        || fixed_count || ' tenant(s)' as problem

    from part_checks

    where
        (
            method in ('direct', 'fixed')
            and fixed_total is distinct from 100
        )
        or (method = 'direct' and fixed_count <> 1)
        or (method not in ('direct', 'fixed') and fixed_count > 0)

    union all

    select
        rules.pool,
        rules.valid_from,
        rules.part,
        'rule part of an unknown cost-pool version' as problem

    from rules

    left join cost_pools
        on
            rules.pool = cost_pools.pool
            and rules.valid_from = cost_pools.valid_from

    where cost_pools.pool is null

    union all

    select
        components.pool,
        components.valid_from,
        components.part,
        'component ' || components.component || ' of an unknown rule part'
            as problem

    from components

    left join rules
        on
            components.pool = rules.pool
            and components.valid_from = rules.valid_from
            and components.part = rules.part

    where rules.pool is null

    union all

    select
        fixed_shares.pool,
        fixed_shares.valid_from,
        fixed_shares.part,
        'fixed share of ' || fixed_shares.tenant_id || ' in an unknown rule part'
            as problem

    from fixed_shares

    left join rules
        on
            fixed_shares.pool = rules.pool
            and fixed_shares.valid_from = rules.valid_from
            and fixed_shares.part = rules.part

    where rules.pool is null

)

select * from problems
