"""Resources from the environment, one way for every service.

``from_env(ResourceClass, fields, secrets)`` reads each field's variable once, at definitions
load: numbers are parsed and fixed choices checked then, so a typo fails loading with a message
that names the variable, never a run halfway through. Secrets go in as ``dg.EnvVar`` so the UI and
run config show the variable's name, never its value.
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import dagster as dg

from ecr_pipelines.lib.settings import env_str

R = TypeVar("R", bound=dg.ConfigurableResource)


class SettingError(ValueError):
    """An environment variable has a value the project cannot use."""


def env_or_default(name: str, default: str | None) -> str | dg.EnvVar | None:
    """``dg.EnvVar(name)`` when the variable is set, else ``default``.

    Dagster refuses an ``EnvVar`` that is unset, hence the fallback for the optional ones.
    """
    return dg.EnvVar(name) if env_str(name) is not None else default


def choice(*allowed: str) -> Callable[[str], str]:
    """A parser for a setting with a fixed set of values (case-insensitive)."""

    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return value

    parse.__name__ = "one of " + ", ".join(allowed)
    return parse


def boolean(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ValueError("must be true or false")


def setting(name: str, parse: Callable[[str], Any] = str) -> Any:
    """One variable, parsed; None when unset or empty. Raises ``SettingError`` naming it."""
    raw = env_str(name)
    if raw is None:
        return None
    try:
        return parse(raw.strip())
    except ValueError as exc:
        raise SettingError(f"{name}={raw!r} is not usable: {exc}") from exc


def from_env(
    cls: type[R],
    fields: Mapping[str, tuple[str, Callable[[str], Any]]],
    secrets: Mapping[str, str] | None = None,
    defaults: Mapping[str, Any] | None = None,
    required_secrets: Sequence[str] = (),
) -> R:
    """``cls`` configured from the environment: ``fields`` maps a field to (variable, parser);
    ``secrets`` maps a field to the variable passed as ``dg.EnvVar`` when set."""
    values: dict[str, Any] = dict(defaults or {})
    for field, (env, parse) in fields.items():
        value = setting(env, parse)
        if value is not None:
            values[field] = value
    for field, env in (secrets or {}).items():
        if env_str(env) is not None or env in required_secrets:
            values[field] = dg.EnvVar(env)
    return cls(**values)
