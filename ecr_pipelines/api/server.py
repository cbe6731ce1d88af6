"""``python -m ecr_pipelines api``: the application under uvicorn, host, port and workers from
the environment (``API_HOST``, ``API_PORT``, ``API_WORKERS``), logging JSON lines to stderr."""

import logging
import sys

from ecr_pipelines.lib.settings import env_number, env_str

LOG_CONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(message)s"}},
    "handlers": {
        "stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr", "formatter": "plain"}
    },
    "loggers": {
        "ecr_pipelines.api.access": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        "uvicorn.error": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
    },
}


def serve() -> int:
    import uvicorn

    host = env_str("API_HOST", "127.0.0.1") or "127.0.0.1"
    port = env_number("API_PORT", 8000)
    workers = env_number("API_WORKERS", 2)
    logging.getLogger("ecr_pipelines.api").info("serving on %s:%d with %d workers", host, port, workers)
    uvicorn.run(
        "ecr_pipelines.api.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        access_log=False,  # ours is the JSON one (AccessLog), without query strings
        log_config=LOG_CONFIG,
        proxy_headers=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(serve())
