"""Chargeback: what each tenant of a shared log platform used, what it cost, what to bill.

Data flows one way, one module per stage::

    sources/simulate -> load -> gate -> transform -> checks -> invoices

``settings`` (where things live), ``warehouse`` (the one connection) and ``money``
(the one rounding rule) are shared by every stage.
"""

__version__ = "0.1.0"
