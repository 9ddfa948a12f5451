{#-
    The usage lines of the invoices: each tenant's usage of a meter in a
    calendar month (UTC), priced.

    1. Usage is summed per tenant, meter, month and stretch of time between two
       price changes (one pass over the days: changes fall on UTC midnight; the
       per-source retention classes stay hourly), then per segment: the
       stretches under one version of the tenant's price book.
    2. Segments count the month's usage cumulatively, in version order: a later
       segment continues where the earlier one stopped, so tiers, the free
       allowance and packages apply to the month as a whole.
    3. Quantities are kept as sums of hourly values; a gauge's quantity is
       that sum divided by the hours of the month (unit-months), so tier
       bounds, allowances and package sizes are multiplied by the divisor
       instead of dividing the usage, and every amount is computed exactly
       and rounded once.
    4. Each segment gives a free-allowance line (price 0, "first 5 GB free")
       for the units the allowance covers, then its priced lines: per_unit and graduated, one per
       tier touched; volume, the tier of the month's billable total for all
       units; package, the blocks reached minus the blocks already counted
       (ceil); retention, the tier of the retention class. A segment
       without usage shows one line at quantity 0.
    4a. Retention per source: a retention-priced meter's usage is split by
       class — the usage of the sources with a class of their own
       (int_usage_retention_hourly) at that class, the rest of the tenant's at
       its default (terms' retention_days) — and each class in use is a segment
       of its own, so one line per class, summed over its sources. Classes are
       the price tiers (the smallest of at least the days): two sources whose
       days fall in the same tier share its line. A tenant without per-source
       classes has one class, as before. Segments of a month count in version
       order, then class order.
    5. Tier bounds are printed as a price sheet states them (tier_lower and
       tier_upper stay in billable units, after the allowance), counted from the month's first unit with the
       free allowance included: "5–1,000 GB", "over 100 alerts".
    6. list_amount = round_money(quantity x unit_price) (package: blocks x
       price), discount_amount = round_money(list_amount x discount% / 100),
       amount = list_amount - discount_amount.

    Usage of a tenant without a price book, or of a meter without a price
    version in force, gives a line without unit_price or list_amount, which
    the mart's contract rejects rather than bill the usage as nothing.
-#}

with

usage as (

    -- the month's usage by UTC day, not by hour: price versions and terms
    -- change at UTC midnight, so a day's sum falls in the same stretch as each
    -- of its hours, and an hourly run reads 31 rows per tenant and meter
    -- instead of 744 (int_usage_daily re-adds the day the run touched)
    select
        tenant_id,
        meter,
        usage_day::timestamp at time zone 'UTC' as hour_start,
        quantity

    from {{ ref('int_usage_daily') }}
    where {{ window_months('usage_day', 'date') }}

),

source_classes as (

    select * from {{ ref('int_usage_retention_hourly') }}
    where {{ window_months('hour_start', 'timestamptz') }}

),

classed_usage as (

    -- the tenant's usage at its default class (retention_days null), less
    -- what its sources with a class of their own used; plus those sources'
    -- usage at their class (rows only for tenants with such sources)
    select
        tenant_id,
        meter,
        hour_start,
        quantity,
        null::integer as retention_days

    from usage

    union all

    select
        tenant_id,
        meter,
        hour_start,
        -quantity as quantity,
        null::integer as retention_days

    from source_classes

    union all

    select
        tenant_id,
        meter,
        hour_start,
        quantity,
        retention_days

    from source_classes

),

meters as (

    select * from {{ ref('stg_config__meters') }}

),

prices as (

    select * from {{ ref('stg_config__prices') }}

),

price_tiers as (

    select * from {{ ref('stg_config__price_tiers') }}

),

tenant_months as (

    select * from {{ ref('int_tenant_terms_monthly') }}

),

price_changes as (

    -- every instant a price version starts or ends, in order: between two of
    -- them (and within a month) every tenant's price versions stay the same
    select
        array_agg(
            change_day::timestamp at time zone 'UTC' order by change_day
        ) as changes

    from (
        select valid_from as change_day from prices
        union
        select valid_to as change_day from prices
        where valid_to is not null
    ) as change_days

),

periodic_usage as (

    -- usage summed per tenant, meter, month and stretch between price
    -- changes, in one pass over the hours (width_bucket: the number of changes
    -- at or before the hour). The changes come from an uncorrelated scalar
    -- subquery: computed once, and unlike a join to the CTE it leaves the scan
    -- free to run in parallel.
    select
        tenant_id,
        meter,
        {{ utc_month('hour_start') }} as invoice_month,
        width_bucket(
            hour_start, (select price_changes.changes from price_changes)
        ) as period,
        retention_days,
        sum(quantity) as quantity_sum

    from classed_usage

    group by tenant_id, meter, invoice_month, period, retention_days

),

periods as (

    -- the day the stretch starts within its month: its prices are those in
    -- force that day
    select
        periodic_usage.*,
        greatest(
            periodic_usage.invoice_month,
            (
                price_changes.changes[periodic_usage.period] at time zone 'UTC'
            )::date
        ) as period_start

    from periodic_usage

    cross join price_changes

),

dated_usage as (

    select
        periods.invoice_month,
        periods.tenant_id,
        periods.meter,
        periods.quantity_sum,
        tenant_months.price_book,
        prices.valid_from as price_valid_from,
        -- retention pricing: the source's days, else the tenant's default
        case
            when prices.pricing_model = 'retention'
                then coalesce(
                    periods.retention_days, tenant_months.retention_days
                )
        end as retention_days

    from periods

    left join tenant_months
        on
            periods.tenant_id = tenant_months.tenant_id
            and periods.invoice_month = tenant_months.invoice_month

    left join prices
        on
            tenant_months.price_book = prices.price_book
            and periods.meter = prices.meter
            and periods.period_start >= prices.valid_from
            and (
                prices.valid_to is null
                or periods.period_start < prices.valid_to
            )

),

retention_classes as (

    -- the class a retention period is priced at: the smallest retention tier
    -- of at least its days
    select
        kept.price_book,
        kept.meter,
        kept.price_valid_from,
        kept.retention_days,
        min(price_tiers.retention_days) as retention_class

    from (
        select distinct
            price_book,
            meter,
            price_valid_from,
            retention_days

        from dated_usage

        where retention_days is not null
    ) as kept

    inner join price_tiers
        on
            kept.price_book = price_tiers.price_book
            and kept.meter = price_tiers.meter
            and kept.price_valid_from = price_tiers.valid_from
            and kept.retention_days <= price_tiers.retention_days

    group by
        kept.price_book,
        kept.meter,
        kept.price_valid_from,
        kept.retention_days

),

classed_segments as (

    select
        dated_usage.invoice_month,
        dated_usage.tenant_id,
        dated_usage.meter,
        dated_usage.price_book,
        dated_usage.price_valid_from,
        retention_classes.retention_class,
        sum(dated_usage.quantity_sum) as usage_sum

    from dated_usage

    left join retention_classes
        on
            dated_usage.price_book = retention_classes.price_book
            and dated_usage.meter = retention_classes.meter
            and dated_usage.price_valid_from
            = retention_classes.price_valid_from
            and dated_usage.retention_days = retention_classes.retention_days

    group by
        dated_usage.invoice_month,
        dated_usage.tenant_id,
        dated_usage.meter,
        dated_usage.price_book,
        dated_usage.price_valid_from,
        retention_classes.retention_class

),

segments as (

    -- a class without usage in a price version where another class has some
    -- (all of the tenant's stored data kept by sources with classes of their
    -- own) shows no line; without any usage, the first class shows its line at
    -- 0, as a tenant with one class does
    select
        invoice_month,
        tenant_id,
        meter,
        price_book,
        price_valid_from,
        retention_class,
        usage_sum

    from (
        select
            *,
            count(*) filter (where usage_sum <> 0) over (
                partition by
                    invoice_month, tenant_id, meter, price_valid_from
            ) as classes_used,
            row_number() over (
                partition by
                    invoice_month, tenant_id, meter, price_valid_from
                order by retention_class
            ) as class_no

        from classed_segments
    ) as counted

    where usage_sum <> 0 or (classes_used = 0 and class_no = 1)

),

cumulative as (

    select
        *,
        coalesce(
            sum(usage_sum) over (
                partition by invoice_month, tenant_id, meter
                order by price_valid_from, retention_class
                rows between unbounded preceding and 1 preceding
            ),
            0
        ) as cum_start_sum,
        -- price versions of the month (classes are not versions)
        dense_rank() over (
            partition by invoice_month, tenant_id, meter
            order by price_valid_from
        ) as version_no

    from segments

),

measured as (

    select
        cumulative.invoice_month,
        cumulative.tenant_id,
        cumulative.meter,
        cumulative.price_book,
        cumulative.price_valid_from,
        cumulative.retention_class,
        max(cumulative.version_no) over (
            partition by
                cumulative.invoice_month, cumulative.tenant_id, cumulative.meter
        ) as segment_count,
        cumulative.usage_sum,
        cumulative.cum_start_sum,
        cumulative.cum_start_sum + cumulative.usage_sum as cum_end_sum,
        case
            when meters.kind = 'gauge'
                then {{ hours_in_month('cumulative.invoice_month') }}
            else 1
        end as divisor,
        case
            when meters.kind = 'gauge' then meters.unit || '-month'
            else meters.unit
        end as unit,
        meters.description as meter_description,
        prices.currency,
        prices.pricing_model,
        prices.free_allowance,
        prices.package_size,
        prices.package_price,
        tenant_months.discount_percent

    from cumulative

    left join meters
        on cumulative.meter = meters.meter

    left join prices
        on
            cumulative.price_book = prices.price_book
            and cumulative.meter = prices.meter
            and cumulative.price_valid_from = prices.valid_from

    left join tenant_months
        on
            cumulative.tenant_id = tenant_months.tenant_id
            and cumulative.invoice_month = tenant_months.invoice_month

),

scaled as (

    select
        *,
        coalesce(free_allowance, 0) * divisor as allowance_sum,
        package_size * divisor as package_sum

    from measured

),

billable as (

    select
        *,
        greatest(
            least(cum_end_sum, allowance_sum)
            - least(cum_start_sum, allowance_sum),
            0
        ) as free_sum,
        greatest(cum_start_sum - allowance_sum, 0) as billable_start_sum,
        greatest(cum_end_sum - allowance_sum, 0) as billable_end_sum

    from scaled

),

month_totals as (

    select
        *,
        sum(billable_end_sum - billable_start_sum) over (
            partition by invoice_month, tenant_id, meter
        ) as month_billable_sum

    from billable

),

tiered as (

    select
        month_totals.*,
        price_tiers.tier,
        price_tiers.lower_bound as tier_lower,
        price_tiers.upper_bound as tier_upper,
        price_tiers.lower_bound * month_totals.divisor as tier_lower_sum,
        price_tiers.upper_bound * month_totals.divisor as tier_upper_sum,
        price_tiers.retention_days as tier_retention_days,
        price_tiers.unit_price as tier_unit_price

    from month_totals

    left join price_tiers
        on
            month_totals.price_book = price_tiers.price_book
            and month_totals.meter = price_tiers.meter
            and month_totals.price_valid_from = price_tiers.valid_from
            and (
                (
                    -- graduated: every tier holding some of the segment's
                    -- billable units; without any, the tier of the next unit
                    month_totals.pricing_model in ('per_unit', 'graduated')
                    and (
                        price_tiers.upper_bound is null
                        or price_tiers.upper_bound * month_totals.divisor
                        > month_totals.billable_start_sum
                    )
                    and (
                        price_tiers.lower_bound * month_totals.divisor
                        < month_totals.billable_end_sum
                        or (
                            month_totals.billable_end_sum
                            = month_totals.billable_start_sum
                            and price_tiers.lower_bound * month_totals.divisor
                            <= month_totals.billable_start_sum
                        )
                    )
                )
                or (
                    -- volume: the tier (lower, upper] of the month's total
                    month_totals.pricing_model = 'volume'
                    and (
                        price_tiers.lower_bound = 0
                        or price_tiers.lower_bound * month_totals.divisor
                        < month_totals.month_billable_sum
                    )
                    and (
                        price_tiers.upper_bound is null
                        or price_tiers.upper_bound * month_totals.divisor
                        >= month_totals.month_billable_sum
                    )
                )
                or (
                    month_totals.pricing_model = 'retention'
                    and month_totals.retention_class
                    = price_tiers.retention_days
                )
            )

    -- a segment the allowance covers entirely has only its free line
    where
        month_totals.billable_end_sum > month_totals.billable_start_sum
        or month_totals.usage_sum = 0

),

priced as (

    select
        *,
        case
            when pricing_model in ('per_unit', 'graduated')
                then greatest(
                    least(
                        billable_end_sum,
                        coalesce(tier_upper_sum, billable_end_sum)
                    )
                    - greatest(
                        billable_start_sum,
                        coalesce(tier_lower_sum, billable_start_sum)
                    ),
                    0
                )
            else billable_end_sum - billable_start_sum
        end as piece_sum,
        -- blocks started by the end of the segment minus those started
        -- before it: ceil(x / size) in exact numeric arithmetic
        case
            when pricing_model = 'package'
                then
                    div(billable_end_sum, package_sum)
                    + case
                        when mod(billable_end_sum, package_sum) > 0 then 1
                        else 0
                    end
                    - div(billable_start_sum, package_sum)
                    - case
                        when mod(billable_start_sum, package_sum) > 0 then 1
                        else 0
                    end
        end as packages,
        case
            when pricing_model = 'package' then package_price
            else tier_unit_price
        end as unit_price,
        -- the bounds as the price sheet states them: counted from the first
        -- unit of the month, the free allowance included (config.price_tiers
        -- keeps them after the allowance)
        case
            when coalesce(free_allowance, 0) = 0 then tier_lower
            else tier_lower + free_allowance
        end as sheet_lower,
        case
            when coalesce(free_allowance, 0) = 0 then tier_upper
            else tier_upper + free_allowance
        end as sheet_upper

    from tiered

),

usage_lines as (

    select
        invoice_month,
        tenant_id,
        meter,
        'usage' as line_type,
        case pricing_model
            when 'graduated'
                then
                    meter_description || ' — tier ' || tier || ': '
                    || {{ tier_range_text('sheet_lower', 'sheet_upper') }}
                    || ' ' || unit
            when 'volume'
                then
                    meter_description || ' — volume tier ' || tier || ': '
                    || {{ tier_range_text('sheet_lower', 'sheet_upper') }}
                    || ' '
                    || unit
                    || ' in the month'
            when 'package'
                then
                    meter_description || ' — '
                    || {{ quantity_text('piece_sum::numeric(60, 30) / divisor') }}
                    || ' ' || unit || ' in packages of '
                    || {{ quantity_text('package_size') }}
            when 'retention'
                then
                    meter_description || ' — ' || tier_retention_days
                    || '-day retention'
            else meter_description
        end
        || case
            when segment_count > 1
                then ' (prices from ' || to_char(
                    greatest(price_valid_from, invoice_month), 'YYYY-MM-DD'
                ) || ')'
            else ''
        end as description,
        price_book,
        price_valid_from,
        pricing_model,
        tier,
        tier_lower,
        tier_upper,
        (piece_sum::numeric(60, 30) / divisor)::numeric(38, 12) as quantity,
        unit,
        unit_price::numeric(18, 6) as unit_price,
        -- what the unit price applies to: the units, or for a package the
        -- packages, e.g. 72 of '100 alerts' (FOCUS PricingQuantity / PricingUnit)
        case
            when pricing_model = 'package' then packages
            else piece_sum::numeric(60, 30) / divisor
        end::numeric(38, 12) as pricing_quantity,
        case
            when pricing_model = 'package'
                then {{ quantity_text('package_size') }} || ' ' || unit
            else unit
        end as pricing_unit,
        case
            when pricing_model = 'package'
                then {{ round_money('packages * unit_price') }}
            else {{ round_money(
                '(piece_sum * unit_price)::numeric(60, 30) / divisor'
            ) }}
        end as list_amount,
        discount_percent,
        currency

    from priced

),

free_lines as (

    select
        invoice_month,
        tenant_id,
        meter,
        'free_allowance' as line_type,
        meter_description || ' — first '
        || {{ quantity_text('free_allowance') }}
        || ' ' || unit || ' free'
        || case
            when segment_count > 1
                then ' (prices from ' || to_char(
                    greatest(price_valid_from, invoice_month), 'YYYY-MM-DD'
                ) || ')'
            else ''
        end as description,
        price_book,
        price_valid_from,
        pricing_model,
        null::integer as tier,
        null::numeric(38, 12) as tier_lower,
        null::numeric(38, 12) as tier_upper,
        (free_sum::numeric(60, 30) / divisor)::numeric(38, 12) as quantity,
        unit,
        0::numeric(18, 6) as unit_price,
        (free_sum::numeric(60, 30) / divisor)::numeric(38, 12)
            as pricing_quantity,
        unit as pricing_unit,
        0::numeric(18, 2) as list_amount,
        discount_percent,
        currency

    from month_totals

    where free_sum > 0

),

lines as (

    select * from free_lines

    union all

    select * from usage_lines

),

final as (

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
        {{ round_money('list_amount * discount_percent / 100') }}
            as discount_amount,
        (
            list_amount
            - {{ round_money('list_amount * discount_percent / 100') }}
        )::numeric(18, 2) as amount,
        currency

    from lines

)

select * from final
