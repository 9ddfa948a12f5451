-- Pricing neither loses nor invents usage: per tenant, meter and month, the
-- quantities of the usage and free-allowance lines add up to the metered usage
-- (a gauge's in unit-months: the hourly levels / hours of the month), up to
-- the rounding of each line's quantity to 12 decimals. Returns offending
-- tenant-meter-months.

with

usage as (

    -- the metered usage by day (int_usage_daily: the hours summed by its group
    -- by), so that an hourly run reads the month's days, not its hours
    select
        tenant_id,
        meter,
        usage_day::timestamp at time zone 'UTC' as hour_start,
        quantity,
        kind

    from {{ ref('int_usage_daily') }}
    where {{ window_months('usage_day', 'date') }}

),

invoice_lines as (

    select * from {{ ref('fct_invoice_lines') }}
    where {{ window_months('invoice_month', 'date') }}

),

metered as (

    select
        tenant_id,
        meter,
        {{ utc_month('hour_start') }} as invoice_month,
        sum(quantity) / case
            when min(kind) = 'gauge'
                then {{ hours_in_month(utc_month('min(hour_start)')) }}
            else 1
        end as quantity

    from usage

    group by tenant_id, meter, {{ utc_month('hour_start') }}

),

billed as (

    select
        tenant_id,
        meter,
        invoice_month,
        sum(quantity) as quantity,
        count(*) as lines

    from invoice_lines

    where line_type in ('usage', 'free_allowance')

    group by tenant_id, meter, invoice_month

),

final as (

    select
        coalesce(metered.invoice_month, billed.invoice_month) as invoice_month,
        coalesce(metered.tenant_id, billed.tenant_id) as tenant_id,
        coalesce(metered.meter, billed.meter) as meter,
        metered.quantity as metered_quantity,
        billed.quantity as billed_quantity

    from metered

    full outer join billed
        on
            metered.tenant_id = billed.tenant_id
            and metered.meter = billed.meter
            and metered.invoice_month = billed.invoice_month

    where
        metered.quantity is null
        or billed.quantity is null
        or abs(metered.quantity - billed.quantity) > billed.lines * 1e-12

)

select * from final
