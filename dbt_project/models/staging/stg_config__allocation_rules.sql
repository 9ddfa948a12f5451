with

source as (

    select * from {{ source('config', 'allocation_rules') }}

),

renamed as (

    select
        pool::text as pool,
        valid_from::date as valid_from,
        part::integer as part,
        share_percent::numeric(7, 4) as share_percent,
        method::text as method

    from source

)

select * from renamed
