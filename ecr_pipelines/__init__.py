"""ecr_pipelines: one Dagster code location for five data-middleware services.

Services (one sub-package and one asset group each): ``registry`` (European cache registry),
``iati`` (IATI refresher), ``ckan`` (CKAN packager), ``datastore`` (data store service) and
``energy`` (energy data hub). Each service package holds its Dagster-free logic, with its
Dagster definitions in ``<service>/defs``; shared Dagster-free code lives in ``lib``, the
Dagster resources that wrap it in ``resources``, stand-ins and the demo in ``dev``. See the
README's "Adding a service".
"""

__version__ = "0.1.0"
