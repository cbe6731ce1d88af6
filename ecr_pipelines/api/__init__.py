"""The HTTP contracts other systems call (no Dagster): one Starlette application beside Dagster,
on the same Postgres tables: the registry API BDR reads (``registry``), the data store's
HAWK-signed API (``datastore``), the CKAN packager's intake (``ckan``) and the energy hub's public
disclosure read (``energy``). Started with ``python -m ecr_pipelines api`` (``server``)."""
