{#-
    How numbers are written in invoice-line descriptions, in one place:
    quantities with thousands separators and no trailing zeros ('1,000',
    '0.5'), money with two decimals ('3,000.00'), tier ranges in words.
-#}
{% macro quantity_text(expr) -%}
    rtrim(to_char(({{ expr }}), 'FM999,999,999,999,999,990.999999999999'), '.')
{%- endmacro %}

{% macro money_text(expr) -%}
    to_char(({{ expr }}), 'FM999,999,999,999,999,990.00')
{%- endmacro %}

{#- 'up to 1,000', '5–1,000' or 'over 10,000', as a price sheet writes them -#}
{% macro tier_range_text(lower, upper) -%}
    case
        when {{ lower }} = 0 and {{ upper }} is not null
            then 'up to ' || {{ quantity_text(upper) }}
        when {{ upper }} is null then 'over ' || {{ quantity_text(lower) }}
        else {{ quantity_text(lower) }} || '–' || {{ quantity_text(upper) }}
    end
{%- endmacro %}
