{#-
    Split `amount` (numeric with cents) over the rows of a partition in
    proportion to `weight`, in whole cents, so that the parts add up to
    `amount` exactly.

    Largest-remainder method: each row first gets the floor of its exact share
    in cents; the cents left over go one each to the rows with the largest
    remainders, ties broken by `order_by` (so the result is deterministic).

    `total_weight` must be the sum of `weight` over the partition, and `amount`
    the same on every row of it. The arithmetic is exact: div() and mod() on
    numeric never round, so no remainder is misranked. A null total_weight
    gives null (the caller decides what an empty partition means). Returns
    numeric(18, 2); a window-function expression, so use it in a select list.

    A negative amount (a credit, a discount line) is split as its absolute value
    and the parts negated: the same cents go to the same rows as for the
    positive amount, and the parts still add up exactly. Weights are >= 0.
-#}
{% macro largest_remainder(
    amount, weight, total_weight, partition_by, order_by
) -%}
    {%- set numerator -%}
        (abs({{ amount }}) * 100 * ({{ weight }}))
    {%- endset -%}
    (
        sign({{ amount }}) * (
            div({{ numerator }}, {{ total_weight }})
            + case
                when row_number() over (
                    partition by {{ partition_by }}
                    order by
                        mod({{ numerator }}, {{ total_weight }}) desc,
                        {{ order_by }}
                ) <= abs({{ amount }}) * 100 - sum(
                    div({{ numerator }}, {{ total_weight }})
                ) over (partition by {{ partition_by }})
                    then 1
                else 0
            end
        ) / 100
    )::numeric(18, 2)
{%- endmacro %}
