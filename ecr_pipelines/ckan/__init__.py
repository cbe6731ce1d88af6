"""The CKAN packager: a datastore resource (or a resource's file) as a ZIP, without Dagster.

``datastore`` pages through CKAN's ``datastore_search`` as the legacy ckanpackager did,
``formats`` writes the rows as CSV, TSV or XLSX, ``package`` validates requests and streams a
package into the blob store or a file, ``cli`` is ``python -m ecr_pipelines ckan package``.
"""
