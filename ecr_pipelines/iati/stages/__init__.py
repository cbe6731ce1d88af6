"""The IATI stages on ``iati.document`` / ``iati.publisher``, one module per stage (no Dagster).

Per-item stages run on ``ecr_pipelines.lib.batch.run_stage``; each module names its due rows,
how one item is processed and how its outcome is recorded."""
