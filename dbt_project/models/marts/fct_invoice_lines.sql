{#-
    One invoice line per tenant, meter and calendar month (UTC), priced per unit
    from the tenant's price book as in force on the first day of the month.
    Counters bill the month's total. Gauges bill unit-months: the sum of the
    hourly levels divided by the hours of the calendar month (an hour without a
    level counts as zero). amount = round_money(quantity x unit_price), computed
    as round_money(Σ x price / hours) so no intermediate rounding can move a
    half cent.
-#}
{{
    config(
        materialized='incremental',
        incremental_strategy='append',
        on_schema_change='fail',
        pre_hook="{{ delete_window() }}",
        post_hook="{{ analyze_after_large_write() }}",
        indexes=[{
            'columns': ['invoice_month', 'tenant_id', 'meter'],
            'unique': true,
        }],
    )
}}

with

usage as (

    select * from {{ ref('fct_usage_hourly') }}
    where {{ window_months('hour_start', 'timestamptz') }}

),

tenants as (

    select * from {{ ref('stg_config__tenants') }}

),

meters as (

    select * from {{ ref('stg_config__meters') }}

),

prices as (

    select * from {{ ref('stg_config__prices') }}

),

monthly_usage as (

    select
        tenant_id,
        meter,
        {{ utc_month('hour_start') }} as invoice_month,
        sum(quantity) as quantity_sum

    from usage

    group by tenant_id, meter, {{ utc_month('hour_start') }}

),

measured as (

    select
        monthly_usage.invoice_month,
        monthly_usage.tenant_id,
        monthly_usage.meter,
        monthly_usage.quantity_sum,
        case
            when meters.kind = 'gauge'
                then {{ hours_in_month('monthly_usage.invoice_month') }}
            else 1
        end as quantity_divisor,
        case
            when meters.kind = 'gauge' then meters.unit || '-month'
            else meters.unit
        end as unit,
        meters.description,
        tenants.price_book

    from monthly_usage

    -- left joins: usage of an unknown meter or tenant, or without a price,
    -- fails the not-null constraints of the contract instead of vanishing
    left join meters
        on monthly_usage.meter = meters.meter

    left join tenants
        on monthly_usage.tenant_id = tenants.tenant_id

),

priced as (

    select
        measured.invoice_month,
        measured.tenant_id,
        measured.meter,
        (
            measured.quantity_sum / measured.quantity_divisor
        )::numeric(38, 12) as quantity,
        measured.unit,
        prices.unit_price,
        {{ round_money(
            'measured.quantity_sum * prices.unit_price'
            ~ ' / measured.quantity_divisor'
        ) }} as amount,
        prices.currency,
        measured.price_book,
        'per_unit' as pricing_model,
        measured.description

    from measured

    left join prices
        on
            measured.price_book = prices.price_book
            and measured.meter = prices.meter
            and prices.valid_from <= measured.invoice_month
            and (
                prices.valid_to is null
                or prices.valid_to > measured.invoice_month
            )

),

final as (

    select * from priced

)

select * from final
