-- The pricing SQL relies on the shape of each price's tiers: package prices
-- have none; per_unit, graduated and volume tiers start at 0, each tier starts
-- where the previous one ends and only the last is open; retention tiers are
-- [0, open) with a retention class. Returns offending prices.

with

prices as (

    select * from {{ ref('stg_config__prices') }}

),

price_tiers as (

    select * from {{ ref('stg_config__price_tiers') }}

),

ordered_tiers as (

    select
        *,
        lag(upper_bound) over (
            partition by price_book, meter, valid_from order by tier
        ) as previous_upper,
        row_number() over (
            partition by price_book, meter, valid_from order by tier
        ) as position,
        count(*) over (partition by price_book, meter, valid_from) as tiers

    from price_tiers

),

tier_problems as (

    select
        prices.price_book,
        prices.meter,
        prices.valid_from,
        prices.pricing_model,
        count(ordered_tiers.tier) as tiers,
        bool_or(
            case
                when prices.pricing_model = 'retention'
                    then
                        ordered_tiers.retention_days is null
                        or ordered_tiers.lower_bound <> 0
                        or ordered_tiers.upper_bound is not null
                else
                    ordered_tiers.retention_days is not null
                    or ordered_tiers.tier <> ordered_tiers.position
                    or ordered_tiers.lower_bound
                    <> coalesce(ordered_tiers.previous_upper, 0)
                    or (ordered_tiers.upper_bound is null)
                    <> (ordered_tiers.position = ordered_tiers.tiers)
            end
        ) as misshapen

    from prices

    left join ordered_tiers
        on
            prices.price_book = ordered_tiers.price_book
            and prices.meter = ordered_tiers.meter
            and prices.valid_from = ordered_tiers.valid_from

    group by
        prices.price_book,
        prices.meter,
        prices.valid_from,
        prices.pricing_model

),

final as (

    select * from tier_problems

    where
        coalesce(misshapen, false)
        or (pricing_model = 'package') <> (tiers = 0)
        or (pricing_model = 'per_unit' and tiers <> 1)

)

select * from final
