{#-
    Usage below the tenant per UTC day: the snapshots summed per tenant,
    source, configured labels and meter. labels keeps only the configured
    label keys (config.label_keys), so the rows stay few however many keys
    producers send; a snapshot without a source is source '(none)'. quantity
    is the sum of the day's values, the weight the showback splits money by
    (a gauge's in unit-hours, as int_usage_daily's).

    Windowed by day: a run deletes and rebuilds the whole UTC days its window
    touches (all days without a window), from the day's snapshots.
-#}
{{ config(indexes=[{'columns': ['usage_day', 'tenant_id']}]) }}

with

snapshots as (

    select * from {{ ref('stg_raw__usage_snapshots') }}
    -- the whole UTC days the window touches
    where {{ window_days('hour_start', 'timestamptz') }}

),

label_keys as (

    select * from {{ ref('stg_config__label_keys') }}

),

meters as (

    select * from {{ ref('stg_config__meters') }}

),

-- first per distinct labels object as sent (few per source), then the
-- configured keys of each: the keys are read once per group, not per row
by_raw_labels as (

    select
        (hour_start at time zone 'UTC')::date as usage_day,
        tenant_id,
        source,
        labels as raw_labels,
        meter,
        sum(quantity) as quantity,
        count(*) as snapshot_count

    from snapshots

    group by
        (hour_start at time zone 'UTC')::date, tenant_id, source, labels, meter

),

configured as (

    select
        by_raw_labels.*,
        coalesce((
            select jsonb_object_agg(pairs.key, pairs.value)
            from jsonb_each(by_raw_labels.raw_labels) as pairs
            where pairs.key in (select label_keys.label_key from label_keys)
        ), '{}'::jsonb) as labels

    from by_raw_labels

),

daily as (

    select
        usage_day,
        tenant_id,
        source,
        labels,
        meter,
        sum(quantity) as quantity,
        sum(snapshot_count) as snapshot_count

    from configured

    group by usage_day, tenant_id, source, labels, meter

),

final as (

    select
        daily.usage_day,
        daily.tenant_id,
        daily.source,
        daily.labels,
        daily.meter,
        daily.quantity::numeric(38, 12) as quantity,
        meters.unit,
        meters.kind,
        daily.snapshot_count::integer as snapshot_count

    from daily

    -- left join: an unknown meter fails the not-null constraint on unit
    left join meters
        on daily.meter = meters.meter

    order by daily.usage_day, daily.tenant_id, daily.source, daily.meter

)

select * from final
