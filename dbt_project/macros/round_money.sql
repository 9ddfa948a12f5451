{#-
    The one place SQL rounds money: half-up to cents, like
    chargeback.money.round_money. PostgreSQL's round(numeric, 2) rounds half
    away from zero, which is half-up for the non-negative amounts Chargeback
    bills. Never pass a float.
-#}
{% macro round_money(amount) -%}
    round(({{ amount }})::numeric, 2)::numeric(18, 2)
{%- endmacro %}
