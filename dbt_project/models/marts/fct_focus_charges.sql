{#-
    The month's billed and allocated charges in the FinOps FOCUS 1.2 format,
    with FOCUS 1.3's Allocated* columns on the cost-to-serve rows. One row per
    invoice line (x_ChargeSource 'invoice') and per monthly allocation row
    (x_ChargeSource 'allocation'). docs/FOCUS.md explains every mapping;
    chargeback.focus exports it and the FOCUS validator checks the file.

    - Invoice lines: BilledCost = EffectiveCost = amount. Usage and free
      allowance lines are ChargeCategory Usage; ListCost = PricingQuantity x
      ListUnitPrice and ContractedCost = PricingQuantity x ContractedUnitPrice
      (the tenant's negotiated discount), unrounded, as FOCUS requires (the
      invoice's rounded list and discount amounts are in x_Invoice*). The
      commitment true-up and the overage uplift are Adjustment: all four costs
      are the line amount, and no quantity or unit price.
    - Allocation rows are showback: BilledCost 0 (nothing of it is invoiced),
      EffectiveCost = ListCost = ContractedCost = allocated_cost, priced as one
      Month of the share. ResourceId is the pool (the origin charge),
      AllocatedResourceId the tenant it is allocated to (null for cost the
      platform keeps: idle and unallocated).
-#}
{{ config(materialized='table') }}


{#- Who provides, publishes and invoices, the billing account of the cost the
    platform keeps, and the service name: dbt vars (ASCII: the FOCUS validator
    accepts no other string), quoted as SQL text. -#}
{%- set provider = var('focus_provider_name', 'Chargeback Log Platform') -%}
{%- set platform = var('focus_platform_account_id', 'platform') -%}
{%- set service = var('focus_service_name', 'Log Platform') -%}
{%- set provider_name = "'" ~ (provider | replace("'", "''")) ~ "'" -%}
{%- set platform_account_id = "'" ~ (platform | replace("'", "''")) ~ "'" -%}
{%- set service_name = "'" ~ (service | replace("'", "''")) ~ "'" -%}

with

-- upstream columns as documented in docs/COST_ENGINE.md sections 3 and 4
invoice_lines as (

    select * from {{ ref('fct_invoice_lines') }}

),

allocations as (

    select * from {{ ref('fct_cost_allocations_monthly') }}

),

tenants as (

    select * from {{ ref('dim_tenants') }}

),

meters as (

    select * from {{ ref('dim_meters') }}

),

tenant_terms as (

    select * from {{ source('config', 'tenant_terms') }}

),

-- a month is billed on the terms in force on its first day; no terms, no
-- discount
tenant_month_discounts as (

    select
        tenant_months.invoice_month,
        tenant_months.tenant_id,
        coalesce(tenant_terms.discount_percent, 0) as discount_percent

    from (
        select distinct
            invoice_month,
            tenant_id
        from invoice_lines
    ) as tenant_months

    left join tenant_terms
        on
            tenant_months.tenant_id = tenant_terms.tenant_id
            and tenant_months.invoice_month >= tenant_terms.valid_from
            and (
                tenant_terms.valid_to is null
                or tenant_months.invoice_month < tenant_terms.valid_to
            )

),

billed as (

    select
        invoice_lines.invoice_month as billing_month,
        invoice_lines.tenant_id,
        'invoice' as charge_source,
        'invoice/' || to_char(invoice_lines.invoice_month, 'YYYY-MM')
        || '/' || invoice_lines.tenant_id
        || '/' || invoice_lines.line_no::text as charge_id,
        invoice_lines.line_type in ('usage', 'free_allowance') as is_usage,
        invoice_lines.description as charge_description,
        invoice_lines.quantity,
        -- FOCUS unit format: GB-month -> GB-Months
        regexp_replace(invoice_lines.unit, '-month$', '-Months') as unit,
        -- the unit price applies to pricing_quantity: units, or packages
        invoice_lines.pricing_quantity,
        regexp_replace(invoice_lines.pricing_unit, '-month$', '-Months')
            as pricing_unit,
        invoice_lines.unit_price as list_unit_price,
        invoice_lines.unit_price
        * (100 - tenant_month_discounts.discount_percent)
        / 100 as contracted_unit_price,
        invoice_lines.amount,
        invoice_lines.currency,
        invoice_lines.meter as sku_id,
        invoice_lines.price_book
        || '/' || invoice_lines.meter
        || '/' || invoice_lines.price_valid_from::text
        || '/' || coalesce(
            'tier-' || invoice_lines.tier::text, invoice_lines.line_type
        ) as sku_price_id,
        jsonb_strip_nulls(jsonb_build_object(
            'x_PriceBook', invoice_lines.price_book,
            'x_PriceValidFrom', invoice_lines.price_valid_from::text,
            'x_PricingModel', invoice_lines.pricing_model,
            'x_Tier', invoice_lines.tier::text
        )) as sku_price_details,
        invoice_lines.line_no,
        invoice_lines.line_type,
        invoice_lines.list_amount,
        invoice_lines.discount_amount

    from invoice_lines

    left join tenant_month_discounts
        on
            invoice_lines.invoice_month = tenant_month_discounts.invoice_month
            and invoice_lines.tenant_id = tenant_month_discounts.tenant_id

),

billed_charges as (

    select
        billing_month,
        tenant_id,
        charge_source,
        charge_id,
        amount::numeric(18, 2) as billed_cost,
        amount::numeric(18, 2) as effective_cost,
        -- exact products; trim_scale drops the trailing zeros of the scales
        case
            when is_usage then trim_scale(pricing_quantity * list_unit_price)
            else amount
        end::numeric as list_cost,
        case
            when is_usage
                then trim_scale(pricing_quantity * contracted_unit_price)
            else amount
        end::numeric as contracted_cost,
        case when is_usage then trim_scale(list_unit_price) end::numeric
            as list_unit_price,
        case when is_usage then trim_scale(contracted_unit_price) end::numeric
            as contracted_unit_price,
        case when is_usage then trim_scale(pricing_quantity) end::numeric
            as pricing_quantity,
        case when is_usage then pricing_unit end as pricing_unit,
        case when is_usage then trim_scale(quantity) end::numeric
            as consumed_quantity,
        case when is_usage then unit end as consumed_unit,
        case when is_usage then 'Usage' else 'Adjustment' end
            as charge_category,
        case when is_usage then 'Usage-Based' else 'Recurring' end
            as charge_frequency,
        charge_description,
        currency,
        null::text as resource_id,
        case when is_usage then sku_id end as sku_id,
        case when is_usage then sku_id end as sku_meter,
        case when is_usage then sku_price_id end as sku_price_id,
        case when is_usage then sku_price_details end as sku_price_details,
        null::text as allocated_method_id,
        null::jsonb as allocated_method_details,
        null::text as cost_type,
        line_no,
        line_type,
        list_amount::numeric(18, 2) as invoice_list_amount,
        discount_amount::numeric(18, 2) as invoice_discount_amount

    from billed

),

pool_month_costs as (

    select
        allocations.*,
        sum(allocations.allocated_cost) over (
            partition by allocations.cost_month, allocations.pool
        ) as pool_month_cost

    from allocations

),

allocated_charges as (

    select
        pool_month_costs.cost_month as billing_month,
        pool_month_costs.tenant_id,
        'allocation' as charge_source,
        'allocation/'
        || to_char(pool_month_costs.cost_month, 'YYYY-MM')
        || '/'
        || coalesce(pool_month_costs.tenant_id, {{ platform_account_id }})
        || '/' || pool_month_costs.pool
        || '/' || pool_month_costs.part::text
        || '/' || pool_month_costs.component
        || '/' || pool_month_costs.cost_type as charge_id,
        0::numeric(18, 2) as billed_cost,
        pool_month_costs.allocated_cost::numeric(18, 2) as effective_cost,
        pool_month_costs.allocated_cost::numeric as list_cost,
        pool_month_costs.allocated_cost::numeric as contracted_cost,
        pool_month_costs.allocated_cost::numeric as list_unit_price,
        pool_month_costs.allocated_cost::numeric as contracted_unit_price,
        1::numeric as pricing_quantity,
        'Month' as pricing_unit,
        1::numeric as consumed_quantity,
        'Month' as consumed_unit,
        'Usage' as charge_category,
        'Recurring' as charge_frequency,
        case pool_month_costs.cost_type
            when 'allocated'
                then
                    'Cost to serve: ' || pool_month_costs.pool
                    || ' pool, ' || pool_month_costs.component
                    || ' (' || pool_month_costs.method || ')'
            when 'idle'
                then
                    'Idle capacity of the ' || pool_month_costs.pool
                    || ' pool, ' || case
                        when pool_month_costs.tenant_id is null
                            then 'kept by the platform'
                        else 'redistributed by usage'
                    end
            else
                'Unallocated cost of the ' || pool_month_costs.pool
                || ' pool: no tenant for ' || pool_month_costs.component
        end as charge_description,
        pool_month_costs.currency,
        pool_month_costs.pool as resource_id,
        'cost-pool/' || pool_month_costs.pool as sku_id,
        pool_month_costs.component as sku_meter,
        'cost-pool/' || pool_month_costs.pool
        || '/' || pool_month_costs.part::text
        || '/' || pool_month_costs.component as sku_price_id,
        -- numbers in SkuPriceDetails must be per-unit values: the part is text
        jsonb_build_object(
            'x_Pool', pool_month_costs.pool,
            'x_Part', pool_month_costs.part::text,
            'x_Component', pool_month_costs.component,
            'x_Method', pool_month_costs.method
        ) as sku_price_details,
        pool_month_costs.method as allocated_method_id,
        jsonb_strip_nulls(jsonb_build_object(
            'Elements', jsonb_build_array(jsonb_strip_nulls(jsonb_build_object(
                'AllocatedRatio', case
                    when pool_month_costs.pool_month_cost = 0 then 0
                    else round(
                        pool_month_costs.allocated_cost
                        / pool_month_costs.pool_month_cost,
                        12
                    )
                end,
                'UsageUnit', case
                    when pool_month_costs.driver_meter is not null
                        then case
                            when meters.kind = 'gauge'
                                then meters.unit || '-Hours'
                            else meters.unit
                        end
                end,
                'UsageQuantity', case
                    when pool_month_costs.driver_meter is not null
                        then pool_month_costs.driver_quantity
                end
            ))),
            'x_Pool', pool_month_costs.pool,
            'x_Part', pool_month_costs.part,
            'x_Component', pool_month_costs.component,
            'x_CostType', pool_month_costs.cost_type,
            'x_DriverMeter', pool_month_costs.driver_meter
        )) as allocated_method_details,
        pool_month_costs.cost_type,
        null::integer as line_no,
        null::text as line_type,
        null::numeric(18, 2) as invoice_list_amount,
        null::numeric(18, 2) as invoice_discount_amount

    from pool_month_costs

    left join meters
        on pool_month_costs.driver_meter = meters.meter

),

charges as (

    select * from billed_charges
    union all
    select * from allocated_charges

),

final as (

    select
        charges.billed_cost as "BilledCost",
        coalesce(tenants.organisation, {{ platform_account_id }})
            as "BillingAccountId",
        coalesce(tenants.organisation, {{ provider_name }})
            as "BillingAccountName",
        charges.currency as "BillingCurrency",
        (
            (charges.billing_month + interval '1 month')::timestamp
            at time zone 'UTC'
        ) as "BillingPeriodEnd",
        (charges.billing_month::timestamp at time zone 'UTC')
            as "BillingPeriodStart",
        charges.charge_category as "ChargeCategory",
        null::text as "ChargeClass",
        charges.charge_description as "ChargeDescription",
        charges.charge_frequency as "ChargeFrequency",
        (
            (charges.billing_month + interval '1 month')::timestamp
            at time zone 'UTC'
        ) as "ChargePeriodEnd",
        (charges.billing_month::timestamp at time zone 'UTC')
            as "ChargePeriodStart",
        null::text as "CommitmentDiscountStatus",
        charges.consumed_quantity as "ConsumedQuantity",
        charges.consumed_unit as "ConsumedUnit",
        charges.contracted_cost as "ContractedCost",
        charges.contracted_unit_price as "ContractedUnitPrice",
        charges.effective_cost as "EffectiveCost",
        to_char(charges.billing_month, 'YYYY-MM') || '/'
        || coalesce(charges.tenant_id, {{ platform_account_id }})
            as "InvoiceId",
        {{ provider_name }} as "InvoiceIssuerName",
        charges.list_cost as "ListCost",
        charges.list_unit_price as "ListUnitPrice",
        case
            when charges.charge_category = 'Usage' then 'Standard'
        end as "PricingCategory",
        charges.currency as "PricingCurrency",
        charges.contracted_unit_price as "PricingCurrencyContractedUnitPrice",
        charges.effective_cost::numeric as "PricingCurrencyEffectiveCost",
        charges.list_unit_price as "PricingCurrencyListUnitPrice",
        charges.pricing_quantity as "PricingQuantity",
        charges.pricing_unit as "PricingUnit",
        {{ provider_name }} as "ProviderName",
        {{ provider_name }} as "PublisherName",
        charges.resource_id as "ResourceId",
        'Management and Governance' as "ServiceCategory",
        {{ service_name }} as "ServiceName",
        'Observability' as "ServiceSubcategory",
        charges.sku_id as "SkuId",
        charges.sku_meter as "SkuMeter",
        charges.sku_price_details as "SkuPriceDetails",
        charges.sku_price_id as "SkuPriceId",
        charges.tenant_id as "SubAccountId",
        tenants.tenant_name as "SubAccountName",
        case
            when tenants.tenant_id is not null
                then jsonb_build_object(
                    'chargeback:organisation', tenants.organisation,
                    'chargeback:business_unit', tenants.business_unit,
                    'chargeback:team', tenants.team
                )
        end as "Tags",
        charges.allocated_method_details as "AllocatedMethodDetails",
        charges.allocated_method_id as "AllocatedMethodId",
        case
            when charges.charge_source = 'allocation' then charges.tenant_id
        end as "AllocatedResourceId",
        case
            when charges.charge_source = 'allocation' then tenants.tenant_name
        end as "AllocatedResourceName",
        charges.charge_id as "x_ChargeId",
        charges.charge_source as "x_ChargeSource",
        charges.cost_type as "x_CostType",
        charges.invoice_discount_amount as "x_InvoiceDiscountAmount",
        charges.invoice_list_amount as "x_InvoiceListAmount",
        charges.line_no as "x_InvoiceLineNo",
        charges.line_type as "x_InvoiceLineType"

    from charges

    left join tenants
        on charges.tenant_id = tenants.tenant_id

)

select * from final
