# ecr_pipelines: the Dagster code location with the webserver; the same image runs the daemon.
#   docker build -t ecr-pipelines .
#   docker run -p 3000:3000 -e DATABASE_URL=... -e DAGSTER_PG_URL=... ecr-pipelines            # webserver
#   docker run -e DATABASE_URL=... -e DAGSTER_PG_URL=... ecr-pipelines dagster-daemon run       # daemon
#   docker run -e DATABASE_URL=... ecr-pipelines python -m ecr_pipelines db upgrade           # migrations
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    DAGSTER_HOME=/opt/dagster/home \
    ECR_HOME=/opt/dagster/ecr \
    ECR_SQL_DIR=/opt/ecr_pipelines/sql

WORKDIR /opt/ecr_pipelines
COPY setup.py pyproject.toml README.md ./
COPY ecr_pipelines ./ecr_pipelines
COPY sql ./sql
COPY solr ./solr
COPY workspace.yaml ./
RUN pip install . \
    && mkdir -p "$DAGSTER_HOME" "$ECR_HOME" \
    && useradd --system --home-dir /opt/dagster dagster \
    && chown -R dagster "$DAGSTER_HOME" "$ECR_HOME"
COPY dagster.yaml "$DAGSTER_HOME/dagster.yaml"

USER dagster
EXPOSE 3000
CMD ["dagster-webserver", "-h", "0.0.0.0", "-p", "3000", "-w", "workspace.yaml"]
