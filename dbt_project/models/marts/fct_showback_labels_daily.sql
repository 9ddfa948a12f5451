{#-
    Showback per label value: for each configured label key
    (stg_config__label_keys), each tenant's daily ledger (int_ledger_daily) per
    meter split over the values of that key in proportion to their usage of
    the meter that day, largest remainder (ties to the first value), so per
    key the values add up to the tenant's ledger exactly. Usage without the
    key is value '(none)'; '(shared)' and '(contract)' money is value
    '(shared)'; money on a day without usage of the meter, '(none)'.
    billed_amount is a share of the tenant's amount, not a re-pricing.

    A view, for the reason fct_showback_sources_daily is one.
-#}
{{ config(materialized='view') }}

with

ledger as (

    select * from {{ ref('int_ledger_daily') }}

),

attribution as (

    select * from {{ ref('int_usage_attribution_daily') }}

),

label_keys as (

    select * from {{ ref('stg_config__label_keys') }}

),

label_usage as (

    select
        attribution.usage_day,
        attribution.tenant_id,
        attribution.meter,
        label_keys.label_key,
        coalesce(
            attribution.labels ->> label_keys.label_key, '(none)'
        ) as label_value,
        min(attribution.unit) as unit,
        min(attribution.kind) as kind,
        sum(attribution.quantity) as quantity

    from attribution

    cross join label_keys

    group by 1, 2, 3, 4, 5

),

weighted as (

    select
        ledger.ledger_day,
        ledger.ledger_month,
        ledger.tenant_id,
        ledger.meter,
        ledger.currency,
        ledger.cost_to_serve,
        ledger.billed_amount,
        label_keys.label_key,
        label_usage.unit,
        label_usage.kind,
        coalesce(
            label_usage.label_value,
            case
                when ledger.meter in ('(shared)', '(contract)') then '(shared)'
                else '(none)'
            end
        ) as label_value,
        coalesce(label_usage.quantity, 0) as weight

    from ledger

    cross join label_keys

    left join label_usage
        on
            ledger.tenant_id = label_usage.tenant_id
            and ledger.meter = label_usage.meter
            and ledger.ledger_day = label_usage.usage_day
            and label_keys.label_key = label_usage.label_key

),

totals as (

    select
        *,
        sum(weight) over (
            partition by ledger_day, tenant_id, meter, currency, label_key
        ) as total_weight,
        count(*) over (
            partition by ledger_day, tenant_id, meter, currency, label_key
        ) as value_count

    from weighted

),

split as (

    select
        ledger_day,
        ledger_month,
        tenant_id,
        label_key,
        label_value,
        meter,
        currency,
        unit,
        kind,
        weight,
        total_weight,
        {{ largest_remainder(
            'cost_to_serve',
            'case when total_weight = 0 then 1 else weight end',
            'case when total_weight = 0 then value_count else total_weight end',
            'ledger_day, tenant_id, meter, currency, label_key',
            'label_value',
        ) }} as cost_to_serve,
        {{ largest_remainder(
            'billed_amount',
            'case when total_weight = 0 then 1 else weight end',
            'case when total_weight = 0 then value_count else total_weight end',
            'ledger_day, tenant_id, meter, currency, label_key',
            'label_value',
        ) }} as billed_amount

    from totals

),

final as (

    select
        ledger_day,
        ledger_month,
        tenant_id,
        label_key,
        label_value,
        meter,
        case
            when unit is null then null
            when kind = 'gauge'
                then round(
                    weight / {{ hours_in_month('ledger_month') }}, 12
                )
            else weight
        end::numeric(38, 12) as usage_quantity,
        case when kind = 'gauge' then unit || '-month' else unit end as unit,
        case
            when total_weight > 0 then round(weight / total_weight, 12)
        end::numeric(38, 12) as usage_share,
        cost_to_serve,
        billed_amount,
        (billed_amount - cost_to_serve)::numeric(18, 2) as margin,
        currency

    from split

)

select * from final
