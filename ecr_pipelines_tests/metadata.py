"""Reading what a run recorded, as plain Python values, for assertions.

``materialization_metadata(result, "platform_status")["schema_version"] == 3`` instead of digging
through ``asset_materializations_for_node(...)[0].metadata[...].value`` in every test. Works on
the result of ``dg.materialize()`` and of ``job.execute_in_process()``.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg

AssetKeyLike = str | Sequence[str] | dg.AssetKey


def plain(value: Any) -> Any:
    """A metadata value as plain Python: ``MetadataValue``s unwrapped, tables as lists of dicts,
    table schemas as ``{column: type}``; anything else unchanged."""
    if isinstance(value, dg.TableMetadataValue):
        return [dict(record.data) for record in value.records]
    if isinstance(value, dg.TableSchemaMetadataValue):
        return {column.name: column.type for column in value.schema.columns}
    if isinstance(value, dg.MetadataValue):
        return value.value
    return value


def plain_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    return {key: plain(value) for key, value in metadata.items()}


def _key(asset_key: AssetKeyLike) -> dg.AssetKey:
    if isinstance(asset_key, dg.AssetKey):
        return asset_key
    if isinstance(asset_key, str):
        return dg.AssetKey.from_user_string(asset_key)
    return dg.AssetKey(list(asset_key))


def materializations(
    result: dg.ExecuteInProcessResult, asset_key: AssetKeyLike
) -> list[dg.AssetMaterialization]:
    """Every materialization of ``asset_key`` in the run, in order (several for partitions)."""
    key = _key(asset_key)
    found = []
    for event in result.get_asset_materialization_events():
        materialization = event.event_specific_data.materialization  # type: ignore[union-attr]
        if materialization.asset_key == key:
            found.append(materialization)
    return found


def materialization_metadata(
    result: dg.ExecuteInProcessResult, asset_key: AssetKeyLike, partition: str | None = None
) -> dict[str, Any]:
    """The metadata of the (last, or ``partition``'s) materialization of ``asset_key`` in the run,
    as plain values. Raises ``KeyError`` naming what the run did materialize when it is missing."""
    found = [m for m in materializations(result, asset_key) if partition is None or m.partition == partition]
    if not found:
        done = sorted(
            {
                e.event_specific_data.materialization.asset_key.to_user_string()  # type: ignore[union-attr]
                for e in result.get_asset_materialization_events()
            }
        )
        wanted = _key(asset_key).to_user_string() + (f" [{partition}]" if partition else "")
        raise KeyError(f"{wanted} was not materialized; the run materialized: {', '.join(done) or 'nothing'}")
    return plain_metadata(found[-1].metadata)


def check_evaluations(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    """``{"<asset>:<check>": passed}`` for every check the run evaluated (the last evaluation
    wins when a check ran more than once)."""
    return {
        evaluation.asset_check_key.to_user_string(): evaluation.passed
        for evaluation in result.get_asset_check_evaluations()
    }


def check_metadata(result: dg.ExecuteInProcessResult, check: str) -> dict[str, Any]:
    """The metadata of the check ``"<asset>:<check>"`` as plain values."""
    for evaluation in reversed(result.get_asset_check_evaluations()):
        if evaluation.asset_check_key.to_user_string() == check:
            return plain_metadata(evaluation.metadata)
    raise KeyError(f"{check} was not evaluated; the run evaluated: {', '.join(check_evaluations(result))}")
