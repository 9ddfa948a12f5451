with

source as (

    select * from {{ source('config', 'allocation_fixed_shares') }}

),

renamed as (

    select
        pool::text as pool,
        valid_from::date as valid_from,
        part::integer as part,
        tenant_id::text as tenant_id,
        percent::numeric(7, 4) as percent

    from source

)

select * from renamed
