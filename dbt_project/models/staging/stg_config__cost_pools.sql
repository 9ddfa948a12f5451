with

source as (

    select * from {{ source('config', 'cost_pools') }}

),

renamed as (

    select
        pool::text as pool,
        description::text as description,
        monthly_cost::numeric(18, 2) as monthly_cost,
        currency::text as currency,
        valid_from::date as valid_from,
        valid_to::date as valid_to,
        method::text as method,
        driver_meter::text as driver_meter

    from source

)

select * from renamed
