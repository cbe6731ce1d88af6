"""ecr_pipelines: one Dagster code location for five data-middleware services.

Services (one sub-package and one asset group each): ``registry`` (European cache registry),
``iati`` (IATI refresher), ``ckan`` (CKAN packager), ``datastore`` (data store service) and
``energy`` (energy data hub). Shared infrastructure lives in ``resources``; the local
stand-ins for unreachable upstream APIs live in ``standins``.
"""

__version__ = "0.1.0"
