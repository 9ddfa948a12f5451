with

source as (

    select * from {{ source('config', 'cost_pools') }}

),

renamed as (

    select
        pool::text as pool,
        valid_from::date as valid_from,
        valid_to::date as valid_to,
        description::text as description,
        monthly_cost::numeric(18, 2) as monthly_cost,
        currency::text as currency,
        capacity_meter::text as capacity_meter,
        capacity_per_hour::numeric(38, 12) as capacity_per_hour,
        idle_policy::text as idle_policy

    from source

)

select * from renamed
