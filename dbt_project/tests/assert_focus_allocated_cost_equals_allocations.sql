-- The cost-to-serve rows carry every allocation of a pool-month, to the cent:
-- per month and pool, EffectiveCost adds up to the allocated cost. Returns
-- offending pool-months.

with

focus_charges as (

    select * from {{ ref('fct_focus_charges') }}

),

allocations as (

    select * from {{ ref('fct_cost_allocations_monthly') }}

),

shown as (

    select
        ("BillingPeriodStart" at time zone 'UTC')::date as cost_month,
        "ResourceId" as pool,
        sum("EffectiveCost") as effective_cost

    from focus_charges

    where "x_ChargeSource" = 'allocation'

    group by cost_month, pool

),

allocated as (

    select
        cost_month,
        pool,
        sum(allocated_cost) as allocated_cost

    from allocations

    group by cost_month, pool

),

final as (

    select
        coalesce(shown.cost_month, allocated.cost_month)
            as cost_month,
        coalesce(shown.pool, allocated.pool) as pool,
        shown.effective_cost,
        allocated.allocated_cost

    from shown

    full outer join allocated
        on
            shown.cost_month = allocated.cost_month
            and shown.pool = allocated.pool

    where shown.effective_cost is distinct from allocated.allocated_cost

)

select * from final
