with

source as (

    select * from {{ source('config', 'label_keys') }}

),

renamed as (

    select label_key::text as label_key

    from source

)

select * from renamed
