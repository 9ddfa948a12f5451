with

source as (

    select * from {{ source('config', 'tenant_terms') }}

),

renamed as (

    select
        tenant_id::text as tenant_id,
        valid_from::date as valid_from,
        valid_to::date as valid_to,
        discount_percent::numeric(7, 4) as discount_percent,
        monthly_commitment::numeric(18, 2) as monthly_commitment,
        overage_uplift_percent::numeric(7, 4) as overage_uplift_percent,
        retention_days::integer as retention_days

    from source

)

select * from renamed
