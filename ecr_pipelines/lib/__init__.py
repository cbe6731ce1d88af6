"""Shared Dagster-free code: settings, Postgres (engine, migrations, set-based SQL), object
storage, mail, HTTP, the CKAN client, the batch-stage runner and the mail outbox.

Nothing under ``lib`` imports Dagster, even indirectly; the ``ConfigurableResource`` wrappers
that hand these clients to assets live in ``ecr_pipelines.resources``.
"""
