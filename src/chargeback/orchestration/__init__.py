"""Running the flow: the steps each Airflow task calls (``steps``), the defaults every DAG
shares (``dag_defaults``) and running the DAGs through Airflow (``runner``)."""
