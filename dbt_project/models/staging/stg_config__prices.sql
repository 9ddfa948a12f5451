with

source as (

    select * from {{ source('config', 'prices') }}

),

renamed as (

    select
        price_book::text as price_book,
        meter::text as meter,
        valid_from::date as valid_from,
        valid_to::date as valid_to,
        currency::text as currency,
        pricing_model::text as pricing_model,
        free_allowance::numeric(38, 12) as free_allowance,
        package_size::numeric(38, 12) as package_size,
        package_price::numeric(18, 6) as package_price

    from source

)

select * from renamed
