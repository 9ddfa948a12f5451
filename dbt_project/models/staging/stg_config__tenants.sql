with

source as (

    select * from {{ source('config', 'tenants') }}

),

renamed as (

    select
        tenant_id::text as tenant_id,
        tenant_name::text as tenant_name,
        organisation::text as organisation,
        business_unit::text as business_unit,
        team::text as team,
        price_book::text as price_book,
        billing_email::text as billing_email

    from source

)

select * from renamed
