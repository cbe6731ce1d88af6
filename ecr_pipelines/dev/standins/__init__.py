"""Local stand-ins for the upstream APIs that cannot be reached from here.

``server.StandInServer`` is the generic recorded-answer server; the recordings for each
service live in ``standins/recordings/<service>/``. Tests and ``make demo`` point the real
clients at these servers.
"""

from ecr_pipelines.dev.standins.server import Fault, RecordedRequest, Reply, Route, StandInServer

__all__ = ["Fault", "RecordedRequest", "Reply", "Route", "StandInServer"]
