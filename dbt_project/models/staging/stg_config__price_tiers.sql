with

source as (

    select * from {{ source('config', 'price_tiers') }}

),

renamed as (

    select
        price_book::text as price_book,
        meter::text as meter,
        valid_from::date as valid_from,
        tier::integer as tier,
        lower_bound::numeric(38, 12) as lower_bound,
        upper_bound::numeric(38, 12) as upper_bound,
        retention_days::integer as retention_days,
        unit_price::numeric(18, 6) as unit_price

    from source

)

select * from renamed
