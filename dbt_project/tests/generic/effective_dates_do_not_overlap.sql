{#-
    Effective-dated configuration ([valid_from, valid_to), valid_to null = open)
    has at most one version in force per key on any day, so a price or an
    allocation rule is never picked twice.
-#}
{% test effective_dates_do_not_overlap(
    model, partition_by, valid_from='valid_from', valid_to='valid_to'
) %}

with

versions as (

    select * from {{ model }}

),

final as (

    select
        {% for column in partition_by -%}
        earlier.{{ column }},
        {% endfor -%}
        earlier.{{ valid_from }} as earlier_valid_from,
        earlier.{{ valid_to }} as earlier_valid_to,
        later.{{ valid_from }} as later_valid_from

    from versions as earlier

    inner join versions as later
        on
            {% for column in partition_by -%}
            earlier.{{ column }} = later.{{ column }}
            and {% endfor -%}
            earlier.{{ valid_from }} < later.{{ valid_from }}

    where
        earlier.{{ valid_to }} is null
        or earlier.{{ valid_to }} > later.{{ valid_from }}

)

select * from final

{% endtest %}
