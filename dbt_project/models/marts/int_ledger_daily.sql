{#-
    The two ledgers per tenant, meter and UTC day: the base of the trend
    marts, month-to-date figures, forecasts and budgets, and of the source and
    label showback. Per tenant and month it adds up exactly to
    fct_ledger_monthly, fct_invoices and fct_cost_allocations_monthly.

    - usage_quantity: the day's metered usage in the invoice's unit (a
      gauge's hourly sum divided by the hours of the month: unit-months, so a
      month's days add up to the invoice quantity up to 12-decimal rounding);
      null on the '(shared)' and '(contract)' rows and on a day with money but
      no usage of the meter.
    - cost_to_serve: the day's allocations to the tenant (idle capacity
      redistributed to it included) by driver meter; allocations without a
      driver meter (direct, fixed, even, activity) on meter '(shared)'.
    - billed_amount: the month's invoice-line amounts of the meter (so far:
      a month in progress has draft lines) split over the month's days in
      proportion to the day's usage of the meter (the sum of its hourly
      values), largest remainder, ties to the earlier day. Lines without a
      meter (commitment true-up, overage uplift) are meter '(contract)',
      split over the tenant's days with usage in proportion to the day's
      billed usage amount (equally when that is all zero).
    - A tenant-month with no usage (a commitment owed with nothing used) has
      its amounts split equally over the month's days on which any tenant has
      usage (the first day of the month if none has); a meter billed without
      usage, the same.

    Windowed by month: the split depends on the whole month, so a run
    rebuilds the months its window touches, from daily inputs
    (int_usage_daily, int_cost_allocations_daily) and the month's invoice
    lines; an hourly run never re-reads a month of hourly rows. Named int_ as
    the issue's parts agreed; it lives in marts because it reads the invoice
    lines (intermediate never reads marts), and BI may read it.
-#}
{{ config(indexes=[{'columns': ['ledger_day', 'tenant_id']}]) }}

with

usage as (

    select * from {{ ref('int_usage_daily') }}
    where {{ window_months('usage_day', 'date') }}

),

allocations as (

    select * from {{ ref('int_cost_allocations_daily') }}
    where
        {{ window_months('cost_day', 'date') }}
        and tenant_id is not null

),

invoice_lines as (

    select * from {{ ref('fct_invoice_lines') }}
    where {{ window_months('invoice_month', 'date') }}

),

usage_daily as (

    select
        usage_day as ledger_day,
        date_trunc('month', usage_day)::date as ledger_month,
        tenant_id,
        meter,
        -- the weight of the billed split: the sum of the day's hourly values
        quantity as weight,
        case
            when kind = 'gauge'
                then round(
                    quantity
                    / {{ hours_in_month("date_trunc('month', usage_day)") }},
                    12
                )
            else quantity
        end as usage_quantity,
        case when kind = 'gauge' then unit || '-month' else unit end as unit

    from usage

),

cost_daily as (

    select
        cost_day as ledger_day,
        tenant_id,
        coalesce(driver_meter, '(shared)') as meter,
        currency,
        sum(allocated_cost) as cost_to_serve

    from allocations

    group by cost_day, tenant_id, coalesce(driver_meter, '(shared)'), currency

),

billed_monthly as (

    select
        invoice_month as ledger_month,
        tenant_id,
        coalesce(meter, '(contract)') as meter,
        currency,
        sum(amount) as billed_amount

    from invoice_lines

    group by invoice_month, tenant_id, coalesce(meter, '(contract)'), currency

),

-- where an amount without usage to follow is spread: the month's days on
-- which any tenant has usage, or its first day when none has
month_days as (

    select distinct
        ledger_month,
        ledger_day

    from usage_daily

    union

    select distinct
        billed_monthly.ledger_month,
        billed_monthly.ledger_month as ledger_day

    from billed_monthly

    where not exists (
        select from usage_daily
        where usage_daily.ledger_month = billed_monthly.ledger_month
    )

),

tenant_days as (

    select distinct
        ledger_month,
        tenant_id,
        ledger_day

    from usage_daily

),

meter_days as (

    select
        billed_monthly.ledger_month,
        billed_monthly.tenant_id,
        billed_monthly.meter,
        billed_monthly.currency,
        billed_monthly.billed_amount,
        usage_daily.ledger_day,
        usage_daily.weight

    from billed_monthly

    inner join usage_daily
        on
            billed_monthly.ledger_month = usage_daily.ledger_month
            and billed_monthly.tenant_id = usage_daily.tenant_id
            and billed_monthly.meter = usage_daily.meter

    union all

    select
        billed_monthly.ledger_month,
        billed_monthly.tenant_id,
        billed_monthly.meter,
        billed_monthly.currency,
        billed_monthly.billed_amount,
        month_days.ledger_day,
        0 as weight

    from billed_monthly

    inner join month_days
        on billed_monthly.ledger_month = month_days.ledger_month

    where
        billed_monthly.meter != '(contract)'
        and not exists (
            select from usage_daily
            where
                usage_daily.ledger_month = billed_monthly.ledger_month
                and usage_daily.tenant_id = billed_monthly.tenant_id
                and usage_daily.meter = billed_monthly.meter
        )

),

meter_weighted as (

    select
        *,
        sum(weight) over (
            partition by ledger_month, tenant_id, meter, currency
        ) as total_weight,
        count(*) over (
            partition by ledger_month, tenant_id, meter, currency
        ) as day_count

    from meter_days

),

meter_split as (

    select
        ledger_month,
        tenant_id,
        meter,
        currency,
        ledger_day,
        {{ largest_remainder(
            'billed_amount',
            'case when total_weight = 0 then 1 else weight end',
            'case when total_weight = 0 then day_count else total_weight end',
            'ledger_month, tenant_id, meter, currency',
            'ledger_day',
        ) }} as billed_amount

    from meter_weighted

),

day_billed as (

    select
        ledger_month,
        tenant_id,
        currency,
        ledger_day,
        sum(billed_amount) as billed_amount

    from meter_split

    group by ledger_month, tenant_id, currency, ledger_day

),

contract_days as (

    select
        billed_monthly.ledger_month,
        billed_monthly.tenant_id,
        billed_monthly.meter,
        billed_monthly.currency,
        billed_monthly.billed_amount,
        tenant_days.ledger_day,
        coalesce(day_billed.billed_amount, 0) as weight

    from billed_monthly

    inner join tenant_days
        on
            billed_monthly.ledger_month = tenant_days.ledger_month
            and billed_monthly.tenant_id = tenant_days.tenant_id

    left join day_billed
        on
            tenant_days.ledger_month = day_billed.ledger_month
            and tenant_days.tenant_id = day_billed.tenant_id
            and tenant_days.ledger_day = day_billed.ledger_day
            and billed_monthly.currency = day_billed.currency

    where billed_monthly.meter = '(contract)'

    union all

    select
        billed_monthly.ledger_month,
        billed_monthly.tenant_id,
        billed_monthly.meter,
        billed_monthly.currency,
        billed_monthly.billed_amount,
        month_days.ledger_day,
        0 as weight

    from billed_monthly

    inner join month_days
        on billed_monthly.ledger_month = month_days.ledger_month

    where
        billed_monthly.meter = '(contract)'
        and not exists (
            select from tenant_days
            where
                tenant_days.ledger_month = billed_monthly.ledger_month
                and tenant_days.tenant_id = billed_monthly.tenant_id
        )

),

contract_weighted as (

    select
        *,
        sum(weight) over (
            partition by ledger_month, tenant_id, currency
        ) as total_weight,
        count(*) over (
            partition by ledger_month, tenant_id, currency
        ) as day_count

    from contract_days

),

contract_split as (

    select
        ledger_month,
        tenant_id,
        meter,
        currency,
        ledger_day,
        {{ largest_remainder(
            'billed_amount',
            'case when total_weight = 0 then 1 else weight end',
            'case when total_weight = 0 then day_count else total_weight end',
            'ledger_month, tenant_id, currency',
            'ledger_day',
        ) }} as billed_amount

    from contract_weighted

),

-- a tenant-month's currency, for its usage rows
tenant_currency as (

    select
        ledger_month,
        tenant_id,
        min(currency) as currency

    from billed_monthly

    group by ledger_month, tenant_id

),

entries as (

    select
        usage_daily.ledger_day,
        usage_daily.tenant_id,
        usage_daily.meter,
        usage_daily.usage_quantity,
        usage_daily.unit,
        tenant_currency.currency,
        0 as cost_to_serve,
        0 as billed_amount

    from usage_daily

    left join tenant_currency
        on
            usage_daily.ledger_month = tenant_currency.ledger_month
            and usage_daily.tenant_id = tenant_currency.tenant_id

    union all

    select
        ledger_day,
        tenant_id,
        meter,
        null as usage_quantity,
        null as unit,
        currency,
        cost_to_serve,
        0 as billed_amount

    from cost_daily

    union all

    select
        ledger_day,
        tenant_id,
        meter,
        null as usage_quantity,
        null as unit,
        currency,
        0 as cost_to_serve,
        billed_amount

    from meter_split

    union all

    select
        ledger_day,
        tenant_id,
        meter,
        null as usage_quantity,
        null as unit,
        currency,
        0 as cost_to_serve,
        billed_amount

    from contract_split

),

ledger as (

    select
        ledger_day,
        tenant_id,
        meter,
        -- a usage-only row of a tenant-month without an invoice line takes
        -- the currency of its cost
        coalesce(
            currency,
            min(currency) over (
                partition by date_trunc('month', ledger_day), tenant_id
            )
        ) as currency,
        usage_quantity,
        unit,
        cost_to_serve,
        billed_amount

    from entries

),

final as (

    select
        ledger_day,
        date_trunc('month', ledger_day)::date as ledger_month,
        tenant_id,
        meter,
        sum(usage_quantity)::numeric(38, 12) as usage_quantity,
        max(unit) as unit,
        sum(cost_to_serve)::numeric(18, 2) as cost_to_serve,
        sum(billed_amount)::numeric(18, 2) as billed_amount,
        (sum(billed_amount) - sum(cost_to_serve))::numeric(18, 2) as margin,
        currency

    from ledger

    group by ledger_day, tenant_id, meter, currency

    order by ledger_day, tenant_id, meter

)

select * from final
