{#-
    The contract terms each configured tenant is billed on, per invoice month:
    the terms in force on the month's first day, or the defaults (no discount,
    no commitment, no uplift, 30-day retention) when none are. Also the
    tenant's price book and its currency on that day, so a month with a
    commitment but no usage can still be invoiced.

    Months: with a window, the months it touches; without, every month from
    the first to the last hour of usage (the hour_start index answers both
    ends).
-#}
{#- Declared always, although a windowed run doesn't read it, so the dbt DAG
    doesn't change with the vars. #}
-- depends_on: {{ ref('int_usage_hourly') }}
{% set window = chargeback_window() %}

with

tenants as (

    select * from {{ ref('stg_config__tenants') }}

),

tenant_terms as (

    select * from {{ ref('stg_config__tenant_terms') }}

),

prices as (

    select * from {{ ref('stg_config__prices') }}

),

{% if window is none -%}
usage as (

    select * from {{ ref('int_usage_hourly') }}

),

usage_span as (

    select
        min(hour_start) as first_hour,
        max(hour_start) as last_hour

    from usage

),

months as (

    select months.month_start::date as invoice_month

    from usage_span

    cross join generate_series(
        date_trunc('month', usage_span.first_hour at time zone 'UTC'),
        date_trunc('month', usage_span.last_hour at time zone 'UTC'),
        interval '1 month'
    ) as months (month_start)

),
{%- else -%}
months as (

    select month_start::date as invoice_month

    from generate_series(
        timestamp '{{ window.first_month }}',
        timestamp '{{ window.end_month }}' - interval '1 month',
        interval '1 month'
    ) as months (month_start)

),
{%- endif %}

book_currencies as (

    select
        price_book,
        valid_from,
        valid_to,
        min(currency) as currency

    from prices

    group by price_book, valid_from, valid_to

),

tenant_months as (

    select
        months.invoice_month,
        tenants.tenant_id,
        tenants.price_book

    from months

    cross join tenants

),

final as (

    select
        tenant_months.invoice_month,
        tenant_months.tenant_id,
        tenant_months.price_book,
        book_currencies.currency,
        tenant_terms.valid_from as terms_valid_from,
        coalesce(tenant_terms.discount_percent, 0)::numeric(7, 4)
            as discount_percent,
        coalesce(tenant_terms.monthly_commitment, 0)::numeric(18, 2)
            as monthly_commitment,
        coalesce(tenant_terms.overage_uplift_percent, 0)::numeric(7, 4)
            as overage_uplift_percent,
        coalesce(tenant_terms.retention_days, 30) as retention_days

    from tenant_months

    left join tenant_terms
        on
            tenant_months.tenant_id = tenant_terms.tenant_id
            and tenant_months.invoice_month >= tenant_terms.valid_from
            and (
                tenant_terms.valid_to is null
                or tenant_months.invoice_month < tenant_terms.valid_to
            )

    left join book_currencies
        on
            tenant_months.price_book = book_currencies.price_book
            and tenant_months.invoice_month >= book_currencies.valid_from
            and (
                book_currencies.valid_to is null
                or tenant_months.invoice_month < book_currencies.valid_to
            )

)

select * from final
