with

source as (

    select * from {{ source('config', 'meters') }}

),

renamed as (

    select
        meter::text as meter,
        unit::text as unit,
        kind::text as kind,
        description::text as description

    from source

)

select * from renamed
