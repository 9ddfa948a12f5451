{#-
    Every line of every invoice (tenant x calendar month, UTC), numbered: the
    usage lines (int_usage_segments_priced: free allowance, tiers, packages,
    retention classes, discount), then the contract lines of the terms in force
    on the month's first day. With N = the sum of the usage lines' amounts:
    - commitment_true_up = commitment - N, when N < commitment (also for a
      tenant without usage: the commitment is owed);
    - overage_uplift = round_money((N - commitment) x uplift% / 100), when
      N > commitment and the uplift is not 0.
    A true-up is 1 month, without a unit price; an uplift is the amount above
    the commitment (unit: the currency) at the uplift rate (unit_price 0.05 for
    5%).
    Contract lines are not discounted.
    Lines are numbered per invoice: by meter, price version, free allowance
    first, then tiers; contract lines last.

    JIT is off for the model's transaction: compiling this query's many
    expressions costs seconds, more than pricing the few thousand segment rows
    left after the first aggregation.
-#}
{{
    config(
        pre_hook="set local jit = off",
        indexes=[{
            'columns': ['invoice_month', 'tenant_id', 'line_no'],
            'unique': true,
        }],
    )
}}

with

usage_lines as (

    select * from {{ ref('int_usage_segments_priced') }}

),

tenant_months as (

    select * from {{ ref('int_tenant_terms_monthly') }}

),

usage_totals as (

    select
        invoice_month,
        tenant_id,
        sum(amount) as net_usage,
        min(currency) as currency

    from usage_lines

    group by invoice_month, tenant_id

),

contracts as (

    select
        tenant_months.invoice_month,
        tenant_months.tenant_id,
        tenant_months.price_book,
        tenant_months.monthly_commitment,
        tenant_months.overage_uplift_percent,
        coalesce(usage_totals.net_usage, 0) as net_usage,
        coalesce(usage_totals.currency, tenant_months.currency) as currency

    from tenant_months

    left join usage_totals
        on
            tenant_months.invoice_month = usage_totals.invoice_month
            and tenant_months.tenant_id = usage_totals.tenant_id

    where
        tenant_months.monthly_commitment > 0
        or tenant_months.overage_uplift_percent > 0

),

contract_amounts as (

    select
        invoice_month,
        tenant_id,
        'commitment_true_up' as line_type,
        'Minimum monthly commitment of '
        || {{ money_text('monthly_commitment') }}
        || ' ' || currency || ': true-up of usage of '
        || {{ money_text('net_usage') }}
        || ' ' || currency as description,
        price_book,
        1 as quantity,
        'month' as unit,
        null::numeric as unit_price,
        monthly_commitment - net_usage as amount,
        currency

    from contracts

    where net_usage < monthly_commitment

    union all

    select
        invoice_month,
        tenant_id,
        'overage_uplift' as line_type,
        'Overage uplift of '
        || rtrim(to_char(overage_uplift_percent, 'FM990.9999'), '.')
        || '% on '
        || {{ money_text('net_usage - monthly_commitment') }}
        || ' ' || currency || ' of usage above the commitment of '
        || {{ money_text('monthly_commitment') }}
        || ' ' || currency as description,
        price_book,
        net_usage - monthly_commitment as quantity,
        currency as unit,
        overage_uplift_percent / 100 as unit_price,
        {{ round_money(
            '(net_usage - monthly_commitment) * overage_uplift_percent / 100'
        ) }} as amount,
        currency

    from contracts

    where
        net_usage > monthly_commitment
        and overage_uplift_percent > 0

),

contract_lines as (

    select
        invoice_month,
        tenant_id,
        null::text as meter,
        line_type,
        description,
        price_book,
        null::date as price_valid_from,
        null::text as pricing_model,
        null::integer as tier,
        null::numeric(38, 12) as tier_lower,
        null::numeric(38, 12) as tier_upper,
        quantity::numeric(38, 12) as quantity,
        unit,
        unit_price::numeric(18, 6) as unit_price,
        quantity::numeric(38, 12) as pricing_quantity,
        unit as pricing_unit,
        amount as list_amount,
        0::numeric(18, 2) as discount_amount,
        amount,
        currency

    from contract_amounts

),

lines as (

    select
        invoice_month,
        tenant_id,
        meter,
        line_type,
        description,
        price_book,
        price_valid_from,
        pricing_model,
        tier,
        tier_lower,
        tier_upper,
        quantity,
        unit,
        unit_price,
        pricing_quantity,
        pricing_unit,
        list_amount,
        discount_amount,
        amount,
        currency,
        0 as line_group

    from usage_lines

    union all

    select
        invoice_month,
        tenant_id,
        meter,
        line_type,
        description,
        price_book,
        price_valid_from,
        pricing_model,
        tier,
        tier_lower,
        tier_upper,
        quantity,
        unit,
        unit_price,
        pricing_quantity,
        pricing_unit,
        list_amount,
        discount_amount,
        amount,
        currency,
        1 as line_group

    from contract_lines

),

final as (

    select
        invoice_month,
        tenant_id,
        row_number() over (
            partition by invoice_month, tenant_id
            order by
                line_group,
                meter collate "C",
                price_valid_from,
                line_type = 'usage',
                tier,
                line_type,
                -- free lines of two retention classes of one version
                quantity
        )::integer as line_no,
        line_type,
        meter,
        description,
        price_book,
        price_valid_from,
        pricing_model,
        tier,
        tier_lower,
        tier_upper,
        quantity::numeric(38, 12) as quantity,
        unit,
        unit_price::numeric(18, 6) as unit_price,
        pricing_quantity::numeric(38, 12) as pricing_quantity,
        pricing_unit,
        list_amount::numeric(18, 2) as list_amount,
        discount_amount::numeric(18, 2) as discount_amount,
        amount::numeric(18, 2) as amount,
        currency

    from lines

)

select * from final
