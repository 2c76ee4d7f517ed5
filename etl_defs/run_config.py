"""Run config of the sync ops, defined once: the jobs' Launchpad schema is derived from these models."""

import types
from typing import Any, Union, get_args, get_origin

import dagster as dg
from bson import ObjectId
from pydantic import Field, field_validator

from etl_defs.settings import DEFAULT_BATCH_SIZE, MAX_BATCH_SIZE

#: The most keys one keyed sync run takes: past it, run the sync over the whole table.
MAX_SYNC_KEYS = 10_000


class SyncOpConfig(dg.Config):
    """Run config every sync op takes."""

    dry_run: bool = Field(default=False, description="Plan and report, write nothing")
    batch_size: int = Field(
        default=DEFAULT_BATCH_SIZE, ge=1, le=MAX_BATCH_SIZE, description="Keys per batch and transaction"
    )
    batch_pause_ms: int = Field(default=0, ge=0, le=60_000, description="Pause after each written batch (ms)")


class ProductSyncOpConfig(SyncOpConfig):
    """Run config of the product sync op."""

    keys: list[str] | None = Field(
        default=None,
        description=f"Only these product ids (ObjectId hex), at most {MAX_SYNC_KEYS}; unset: every product",
    )

    @field_validator("keys")
    @classmethod
    def _product_ids(cls, keys: list[str] | None) -> list[str] | None:
        if keys is None:
            return None
        if not keys:
            raise ValueError("give at least one product id, or leave keys out to sync every product")
        if len(keys) > MAX_SYNC_KEYS:
            raise ValueError(
                f"{len(keys)} keys is more than the {MAX_SYNC_KEYS} one run takes: "
                "split them over several runs, or leave keys out to sync every product"
            )
        bad = [key for key in keys if not (isinstance(key, str) and len(key) == 24 and ObjectId.is_valid(key))]
        if bad:
            shown = ", ".join(repr(key) for key in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            raise ValueError(f"product ids are 24 hex digits (an ObjectId); not: {shown}")
        return sorted({key.lower() for key in keys})


class CartSyncOpConfig(SyncOpConfig):
    """Run config of the cart sync op."""

    user_id: str | None = Field(default=None, min_length=1, description="Only this user's carts, on both sides")
    prune_orphans: bool = Field(default=False, description="Delete Order DB carts that are no longer in the Cart DB")


def allowed(model: type[dg.Config], name: str) -> str:
    """The range a numeric field allows, from its pydantic bounds: ' (allowed: 1 to 100000)'."""
    bounds = {}
    for constraint in model.model_fields[name].metadata:
        for kind in ("ge", "le"):
            if getattr(constraint, kind, None) is not None:
                bounds[kind] = getattr(constraint, kind)
    if set(bounds) == {"ge", "le"}:
        return f" (allowed: {bounds['ge']} to {bounds['le']})"
    return ""


def _dagster_type(annotation: Any) -> Any:
    """`bool`, `int`, `str` as they are; `list[X]` as `[X]`; `X | None` as `dg.Noneable(X)`."""
    if get_origin(annotation) in (Union, types.UnionType):
        [inner] = [arg for arg in get_args(annotation) if arg is not type(None)]
        return dg.Noneable(_dagster_type(inner))
    if get_origin(annotation) is list:
        [inner] = get_args(annotation)
        return [_dagster_type(inner)]
    return annotation


def launchpad_schema(model: type[dg.Config], **defaults: Any) -> dict[str, dg.Field]:
    """A job's run config schema from `model`'s fields (`defaults` override theirs).

    The Launchpad shows each description above its field, so it carries the field's range;
    the bounds themselves are checked by `model` when the config mapping validates a run.
    """
    schema = {}
    for name, field in model.model_fields.items():
        schema[name] = dg.Field(
            _dagster_type(field.annotation),
            default_value=defaults.get(name, field.default),
            description=f"{field.description}{allowed(model, name)}",
        )
    return schema
