"""Data store (group `datastore`): the legacy data-store-service's source files and CSV uploads
loaded into Postgres tables; ``uploads`` checks an uploaded CSV and infers its column types."""
