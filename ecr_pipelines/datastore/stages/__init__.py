"""The data store's stages as the Dagster assets run them (no Dagster): ``sources`` loads the source
files, ``uploads`` registers, checks and loads CSV uploads."""
