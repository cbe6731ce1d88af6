"""Energy data hub (group `energy`): the legacy datahub-service's metering points and hourly
measurements imported from ElOverblik, guarantees of origin, signed webhooks, disclosures and
technology labels (no Dagster)."""
