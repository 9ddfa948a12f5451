"""The cost engine: the reviewed configuration (tenants, meters, cost pools, price books),
the dbt transform that allocates costs and prices usage, and the mart checks after it.
``pricing`` and ``allocation`` are Python references the dbt models are tested against."""
