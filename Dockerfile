# ecr_pipelines: the Dagster code location with the webserver; the same image runs the daemon.
#   docker build -t ecr-pipelines .
#   docker run -p 3000:3000 -e DATABASE_URL=... -e DAGSTER_PG_URL=... ecr-pipelines            # webserver
#   docker run -e DATABASE_URL=... -e DAGSTER_PG_URL=... ecr-pipelines dagster-daemon run       # daemon
#   docker run -p 8000:8000 -e API_HOST=0.0.0.0 -e DATABASE_URL=... -e API_TOKEN=... ecr-pipelines \
#       python -m ecr_pipelines api                 # the HTTP contracts (BDR, data-flow, CKAN)
#   docker run -e DATABASE_URL=... -e DAGSTER_PG_URL=... ecr-pipelines \
#       python -m ecr_pipelines db upgrade          # migrations, then the Dagster pool limits
# The image holds production code only: no tests and no ecr_pipelines/dev (stand-ins, recordings,
# the demo), so `python -m ecr_pipelines demo|dev|standin` answer that they need a source checkout.

# Stage 1: a wheel of the package without its development code. Pruning in this stage, not after a
# COPY into the final one, keeps the dev files out of every layer of the image.
FROM python:3.11-slim AS wheel
WORKDIR /src
COPY setup.py pyproject.toml README.md ./
COPY ecr_pipelines ./ecr_pipelines
RUN rm -rf ecr_pipelines/dev \
    && find . -name __pycache__ -type d -prune -exec rm -rf {} + \
    && pip wheel --no-deps --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    DAGSTER_HOME=/opt/dagster/home \
    ECR_HOME=/opt/dagster/ecr \
    ECR_SQL_DIR=/opt/ecr_pipelines/sql

WORKDIR /opt/ecr_pipelines
COPY --from=wheel /wheels /tmp/wheels
# The last check fails the build if development code ever reaches the installed package.
RUN pip install /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels \
    && python -c "import importlib.util as u, sys; sys.exit(u.find_spec('ecr_pipelines.dev') is not None)" \
    && mkdir -p "$DAGSTER_HOME" "$ECR_HOME" \
    && useradd --system --home-dir /opt/dagster dagster \
    && chown -R dagster "$DAGSTER_HOME" "$ECR_HOME"
# Migrations (ECR_SQL_DIR), Solr configsets for deployment, and the workspace the webserver loads;
# workspace.yaml's working directory holds no source, so the installed package is what runs.
COPY sql ./sql
COPY solr ./solr
COPY workspace.yaml ./
COPY dagster.yaml "$DAGSTER_HOME/dagster.yaml"

USER dagster
EXPOSE 3000 8000
CMD ["dagster-webserver", "-h", "0.0.0.0", "-p", "3000", "-w", "workspace.yaml"]
