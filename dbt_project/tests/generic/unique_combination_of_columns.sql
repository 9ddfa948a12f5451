{#-
    The combination of columns is unique: the grain of a model with a composite
    key. Nulls count as a value (two rows with tenant_id null for the same pool
    and hour are a duplicate), unlike in a unique index.
-#}
{% test unique_combination_of_columns(model, combination_of_columns) %}

with

keyed as (

    select
        {{ combination_of_columns | join(',\n        ') }},
        count(*) as row_count

    from {{ model }}

    group by {{ combination_of_columns | join(', ') }}

),

final as (

    select * from keyed where row_count > 1

)

select * from final

{% endtest %}
