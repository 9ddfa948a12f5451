with

source as (

    select * from {{ source('config', 'tenant_source_retention') }}

),

renamed as (

    select
        tenant_id::text as tenant_id,
        valid_from::date as valid_from,
        source::text as source,
        retention_days::integer as retention_days

    from source

)

select * from renamed
