{#-
    Showback below the tenant: each tenant's daily ledger (int_ledger_daily)
    per meter split over the sources that used the meter that day, in
    proportion to their usage (int_usage_sources_daily), with the
    largest-remainder rule (ties to the first source by name), so the sources
    of a tenant, meter and day add up to the ledger exactly, in both ledgers.

    - '(shared)' (allocations without a driver meter) and '(contract)'
      (commitment true-up, overage uplift) follow no meter's usage: source
      '(shared)'.
    - Money on a meter and day without usage of it: source '(none)'; a day
      whose sources all used 0 splits equally.
    - billed_amount is the source's share of the tenant's billed amount, not a
      re-pricing: under tiers a source is not billed at "its own" tier.

    A view: the month's billed split changes every hour of a month in progress
    (tiers count the whole month), so a table would rewrite the month's source
    rows every hour; read one tenant or month at a time (the filters reach the
    indexed tables under it).
-#}
{{ config(materialized='view') }}

with

ledger as (

    select * from {{ ref('int_ledger_daily') }}

),

sources as (

    select * from {{ ref('int_usage_sources_daily') }}

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
        sources.unit,
        sources.kind,
        coalesce(
            sources.source,
            case
                when ledger.meter in ('(shared)', '(contract)') then '(shared)'
                else '(none)'
            end
        ) as source,
        coalesce(sources.quantity, 0) as weight

    from ledger

    left join sources
        on
            ledger.tenant_id = sources.tenant_id
            and ledger.meter = sources.meter
            and ledger.ledger_day = sources.usage_day

),

totals as (

    select
        *,
        sum(weight) over (
            partition by ledger_day, tenant_id, meter, currency
        ) as total_weight,
        count(*) over (
            partition by ledger_day, tenant_id, meter, currency
        ) as source_count

    from weighted

),

split as (

    select
        ledger_day,
        ledger_month,
        tenant_id,
        source,
        meter,
        currency,
        unit,
        kind,
        weight,
        total_weight,
        {{ largest_remainder(
            'cost_to_serve',
            'case when total_weight = 0 then 1 else weight end',
            'case when total_weight = 0 then source_count else total_weight end',
            'ledger_day, tenant_id, meter, currency',
            'source',
        ) }} as cost_to_serve,
        {{ largest_remainder(
            'billed_amount',
            'case when total_weight = 0 then 1 else weight end',
            'case when total_weight = 0 then source_count else total_weight end',
            'ledger_day, tenant_id, meter, currency',
            'source',
        ) }} as billed_amount

    from totals

),

final as (

    select
        ledger_day,
        ledger_month,
        tenant_id,
        source,
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
