"""The CKAN packager's stages: the request queue, the packaging and the clean-up (no Dagster)."""
