-- Every pool-hour of the run is allocated, and its allocations (idle and
-- unallocated rows included) add up to the pool cost to the cent; the rows of
-- idle capacity (method 'idle') add up to the idle cost. One pass over the
-- (large) hourly fact. Returns offending pool-hours.

with

pool_hours as (

    select * from {{ ref('fct_cost_pools_hourly') }}
    where {{ window_hours('hour_start') }}

),

allocations as (

    select * from {{ ref('fct_cost_allocations_hourly') }}
    where {{ window_hours('hour_start') }}

),

allocated as (

    select
        pool,
        hour_start,
        sum(allocated_cost) as allocated_cost,
        coalesce(sum(allocated_cost) filter (where method = 'idle'), 0)
            as idle_cost

    from allocations

    group by pool, hour_start

),

final as (

    select
        coalesce(pool_hours.pool, allocated.pool) as pool,
        coalesce(pool_hours.hour_start, allocated.hour_start) as hour_start,
        pool_hours.pool_cost,
        allocated.allocated_cost,
        pool_hours.idle_cost,
        allocated.idle_cost as allocated_idle_cost

    from pool_hours

    full outer join allocated
        on
            pool_hours.pool = allocated.pool
            and pool_hours.hour_start = allocated.hour_start

    where
        pool_hours.pool_cost is distinct from allocated.allocated_cost
        or pool_hours.idle_cost is distinct from allocated.idle_cost

)

select * from final
