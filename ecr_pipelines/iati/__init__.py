"""IATI refresher: publisher and document sync, download, validation, safety check, clean,
flatten, activity lake and Solr (Dagster-free logic; the Dagster definitions are in ``defs``)."""
