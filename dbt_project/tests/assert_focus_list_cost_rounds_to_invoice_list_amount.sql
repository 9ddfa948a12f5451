-- On billed usage rows FOCUS needs ListCost = PricingQuantity x ListUnitPrice
-- (and ContractedCost = PricingQuantity x ContractedUnitPrice) exactly, so
-- ListCost is unrounded; rounded half-up to cents it must be the
-- invoice line's list_amount (and the line's discount must be the negotiated
-- one: list_amount - amount). A package line whose quantity were units instead
-- of packages would fail here. Returns offending rows.

with

focus_charges as (

    select * from {{ ref('fct_focus_charges') }}

),

final as (

    select
        "x_ChargeId",
        "ListCost",
        "x_InvoiceListAmount",
        "BilledCost",
        "x_InvoiceDiscountAmount"

    from focus_charges

    where
        "x_ChargeSource" = 'invoice'
        and "ChargeCategory" = 'Usage'
        and (
            {{ round_money('"ListCost"') }} <> "x_InvoiceListAmount"
            or "ListCost" <> "PricingQuantity" * "ListUnitPrice"
            or "ContractedCost" <> "PricingQuantity" * "ContractedUnitPrice"
            or "BilledCost" <> "x_InvoiceListAmount" - "x_InvoiceDiscountAmount"
        )

)

select * from final
