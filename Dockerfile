# Airflow with Chargeback installed — used by docker-compose.yml.
FROM apache/airflow:3.3.2-python3.11
USER root
RUN apt-get update \
 && apt-get install -y --no-install-recommends libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 \
 && rm -rf /var/lib/apt/lists/*
USER airflow
COPY --chown=airflow:root . /opt/chargeback
RUN pip install --no-cache-dir -e /opt/chargeback \
 && cd /opt/chargeback && python -c "from chargeback.engine import transform; transform.parse()"
