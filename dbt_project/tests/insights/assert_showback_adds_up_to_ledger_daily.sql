{#-
    The source and label showback add up exactly to int_ledger_daily per
    tenant, meter, day and ledger (per label key for labels), and no ledger
    row is missing from either. Looks only at the window's days.
-#}
with

ledger as (

    select * from {{ ref('int_ledger_daily') }}
    where {{ window_days('ledger_day', 'date') }}

),

label_keys as (

    select * from {{ ref('stg_config__label_keys') }}

),

sources as (

    select
        ledger_day,
        tenant_id,
        meter,
        currency,
        sum(cost_to_serve) as cost_to_serve,
        sum(billed_amount) as billed_amount

    from {{ ref('fct_showback_sources_daily') }}
    where {{ window_days('ledger_day', 'date') }}
    group by 1, 2, 3, 4

),

labels as (

    select
        ledger_day,
        tenant_id,
        meter,
        currency,
        label_key,
        sum(cost_to_serve) as cost_to_serve,
        sum(billed_amount) as billed_amount

    from {{ ref('fct_showback_labels_daily') }}
    where {{ window_days('ledger_day', 'date') }}
    group by 1, 2, 3, 4, 5

),

expected_labels as (

    select
        ledger.*,
        label_keys.label_key

    from ledger

    cross join label_keys

),

source_gaps as (

    select
        'sources' as level,
        null as label_key,
        coalesce(ledger.ledger_day, sources.ledger_day) as ledger_day,
        coalesce(ledger.tenant_id, sources.tenant_id) as tenant_id,
        coalesce(ledger.meter, sources.meter) as meter,
        ledger.cost_to_serve as ledger_cost_to_serve,
        sources.cost_to_serve as parts_cost_to_serve,
        ledger.billed_amount as ledger_billed_amount,
        sources.billed_amount as parts_billed_amount

    from ledger

    full outer join sources
        on
            ledger.ledger_day = sources.ledger_day
            and ledger.tenant_id = sources.tenant_id
            and ledger.meter = sources.meter
            and ledger.currency = sources.currency

    where
        ledger.cost_to_serve is distinct from sources.cost_to_serve
        or ledger.billed_amount is distinct from sources.billed_amount

),

label_gaps as (

    select
        'labels' as level,
        coalesce(expected_labels.label_key, labels.label_key) as label_key,
        coalesce(expected_labels.ledger_day, labels.ledger_day) as ledger_day,
        coalesce(expected_labels.tenant_id, labels.tenant_id) as tenant_id,
        coalesce(expected_labels.meter, labels.meter) as meter,
        expected_labels.cost_to_serve as ledger_cost_to_serve,
        labels.cost_to_serve as parts_cost_to_serve,
        expected_labels.billed_amount as ledger_billed_amount,
        labels.billed_amount as parts_billed_amount

    from expected_labels

    full outer join labels
        on
            expected_labels.ledger_day = labels.ledger_day
            and expected_labels.tenant_id = labels.tenant_id
            and expected_labels.meter = labels.meter
            and expected_labels.currency = labels.currency
            and expected_labels.label_key = labels.label_key

    where
        expected_labels.cost_to_serve is distinct from labels.cost_to_serve
        or expected_labels.billed_amount is distinct from labels.billed_amount

)

select * from source_gaps
union all
select * from label_gaps
