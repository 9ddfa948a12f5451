{#-
    Usage per tenant, source, meter and UTC day: int_usage_attribution_daily
    without the labels. The weight fct_showback_sources_daily splits each
    tenant's ledger by. retention_days: the class the source's stored GB are
    kept at that day — its own (terms' source_retention_days) where the terms
    in force give it one, else the terms' default; null without terms.

    Windowed by day, like the model it reads.
-#}
{{ config(indexes=[{'columns': ['usage_day', 'tenant_id']}]) }}

with

attribution as (

    select * from {{ ref('int_usage_attribution_daily') }}
    where {{ window_days('usage_day', 'date') }}

),

terms as (

    select * from {{ ref('stg_config__tenant_terms') }}

),

source_retention as (

    select * from {{ ref('stg_config__tenant_source_retention') }}

),

daily as (

    select
        usage_day,
        tenant_id,
        source,
        meter,
        min(unit) as unit,
        min(kind) as kind,
        sum(quantity) as quantity,
        sum(snapshot_count) as snapshot_count

    from attribution

    group by usage_day, tenant_id, source, meter

),

final as (

    select
        daily.usage_day,
        daily.tenant_id,
        daily.source,
        daily.meter,
        daily.quantity::numeric(38, 12) as quantity,
        daily.unit,
        daily.kind,
        daily.snapshot_count::integer as snapshot_count,
        coalesce(source_retention.retention_days, terms.retention_days)
            as retention_days

    from daily

    -- the terms version in force that day
    left join terms
        on
            daily.tenant_id = terms.tenant_id
            and daily.usage_day >= terms.valid_from
            and (terms.valid_to is null or daily.usage_day < terms.valid_to)

    left join source_retention
        on
            terms.tenant_id = source_retention.tenant_id
            and terms.valid_from = source_retention.valid_from
            and daily.source = source_retention.source

    order by daily.usage_day, daily.tenant_id, daily.source, daily.meter

)

select * from final
