"""The energy hub's stages as the Dagster assets run them (no Dagster): ``meteringpoints``
imports customers' metering points, ``measurements`` their hours and GGOs, ``disclosures``
compiles disclosures."""
