{#- The instant up to which the marts know usage: the end of the last hour with
    published usage (the hour after the latest hour_start of int_usage_hourly);
    null on an empty warehouse. A scalar subquery, read through the table's
    hour_start index (one row). chargeback.platform.freshness.usage_through
    answers the same from Python. -#}
{% macro usage_through() -%}
    (
        select max(hour_start) + interval '1 hour'
        from {{ ref('int_usage_hourly') }}
    )
{%- endmacro %}

{#- Predicate: a date column lies in the months the window touches or in the
    `days` days before them (true without a window): the rows a windowed model
    reads to compute a look-back (e.g. same weekday last week). -#}
{% macro window_months_with_lookback(column, days) -%}
    {%- set window = chargeback_window() -%}
    {%- if window is none -%}
        true
    {%- else -%}
        ({{ column }} >= date '{{ window.first_month }}' - {{ days }}
        and {{ column }} < date '{{ window.end_month }}')
    {%- endif -%}
{%- endmacro %}
