"""``python -m ecr_pipelines.ckan package ...`` (the same as ``python -m ecr_pipelines ckan ...``)."""

import sys

from ecr_pipelines.ckan.cli import main

if __name__ == "__main__":
    sys.exit(main())
