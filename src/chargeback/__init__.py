"""Chargeback: what each tenant of a shared log platform used, what it cost, what to bill.

The subpackages are the stages of the flow, and data flows one way (import-linter's
contracts in ``pyproject.toml`` keep it so)::

    cli, bench  ->  orchestration  ->  billing  ->  engine  ->  ingest  ->  platform

``ingest`` extracts, loads and gates usage; ``engine`` holds the configuration, the dbt
transform and the mart checks; ``billing`` renders and issues invoices; ``orchestration``
is what Airflow's tasks call; ``platform`` is shared by all of them.
"""

__version__ = "0.1.0"
