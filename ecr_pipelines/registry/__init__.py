"""Registry cache: F-gas / ODS undertakings, BDR old companies and collections, matching,
ODS licences.

Everything here but ``defs`` is Dagster-free logic (it may use ``ecr_pipelines.lib``):

* parsing and rules: ``parse``, ``rules``, ``reference``, ``licences`` (aggregation), ``matching``
  (the vectorised candidate search), ``patches`` (the operator's PATCH_* file), ``clients``;
* one logic module per stage: ``store.reference``, ``store.undertakings``, ``store.old_companies``,
  ``store.collections``, ``store.licences`` (one per table family), ``links`` (the matching run)
  and ``operator`` (verify, manual, unverify, flush).

``defs`` holds the Dagster definitions, one asset module per stage under the same name.
"""
