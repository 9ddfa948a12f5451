with

source as (

    select * from {{ source('config', 'prices') }}

),

renamed as (

    select
        price_book::text as price_book,
        meter::text as meter,
        currency::text as currency,
        unit_price::numeric(18, 6) as unit_price,
        valid_from::date as valid_from,
        valid_to::date as valid_to

    from source

)

select * from renamed
