"""Development code: stand-in upstream servers with their recordings, and the demo wiring.

Nothing that production imports (``ecr_pipelines.definitions`` and what it loads) imports this
package, and the Docker image leaves it out; ``make demo``, ``make dev``, the tests and
``python -m ecr_pipelines standin ...`` use it.
"""
