{{ config(materialized='table') }}

with

meters as (

    select * from {{ ref('stg_config__meters') }}

),

final as (

    select
        meter,
        unit,
        kind,
        description

    from meters

)

select * from final
