with

source as (

    select * from {{ source('raw', 'usage_snapshots') }}

),

renamed as (

    select
        snapshot_id::text as snapshot_id,
        tenant_id::text as tenant_id,
        meter::text as meter,
        value::numeric as quantity,
        unit::text as unit,
        kind::text as kind,
        hour_start::timestamptz as hour_start,
        emitted_at::timestamptz as emitted_at,
        source_file::text as source_file,
        source_line::integer as source_line,
        load_id::bigint as load_id,
        loaded_at::timestamptz as loaded_at,
        landed_hour::timestamptz as landed_hour,
        learned_at::timestamptz as learned_at,
        source::text as source,
        labels::jsonb as labels

    from source

)

select * from renamed
