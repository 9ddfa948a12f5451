{#-
    Calendar helpers. Month arithmetic is done in UTC on `timestamp` values, so
    neither the session TimeZone nor daylight saving moves a month boundary.
-#}

{#- First day (date) of the UTC month of a timestamptz expression. -#}
{% macro utc_month(timestamptz_expression) -%}
    (
        date_trunc('month', ({{ timestamptz_expression }}) at time zone 'UTC')
    )::date
{%- endmacro %}

{#- Hours in the calendar month starting at a date or timestamp. -#}
{% macro hours_in_month(month_start) -%}
    (
        extract(
            epoch from (
                ({{ month_start }})::timestamp + interval '1 month'
            ) - ({{ month_start }})::timestamp
        ) / 3600
    )::integer
{%- endmacro %}
