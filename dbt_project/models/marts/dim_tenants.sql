{{ config(materialized='table') }}

with

tenants as (

    select * from {{ ref('stg_config__tenants') }}

),

final as (

    select
        tenant_id,
        tenant_name,
        organisation,
        business_unit,
        team,
        price_book,
        billing_email

    from tenants

)

select * from final
