with

source as (

    select * from {{ source('config', 'allocation_components') }}

),

renamed as (

    select
        pool::text as pool,
        valid_from::date as valid_from,
        part::integer as part,
        component::text as component,
        basis::text as basis,
        meter::text as meter,
        weight::numeric(18, 6) as weight

    from source

)

select * from renamed
