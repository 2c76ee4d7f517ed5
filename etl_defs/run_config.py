"""Run config of the sync jobs, defined once: one model per pipeline, from which each job's Launchpad schema,
its config mapping's validation, `full_sync_job`'s variant and the change sensors' run requests are derived."""

import re
import types
import uuid
from collections.abc import Callable
from typing import Any, Union, get_args, get_origin

import dagster as dg
from bson import ObjectId
from pydantic import Field, ValidationError, field_validator, model_validator

from etl_defs.settings import MAX_BATCH_SIZE
from etl_defs.sync import MAX_PARALLELISM, WHOLE_TABLE, SyncScope

#: The most keys one keyed sync run takes: past it, run the sync over the whole table.
MAX_SYNC_KEYS = 10_000
#: A PostgreSQL LSN as `pg_lsn` prints it: `0/15302A0`.
_LSN = re.compile(r"^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$")


def _checked_keys(keys: list[str], what: str, valid: Callable[[str], bool], spelled: str) -> list[str]:
    """`keys` lower-cased, sorted and unique; refused when empty, past the bound, or not all `valid`."""
    if not keys:
        raise ValueError(f"give at least one {what} id, or leave keys out to sync every {what}")
    if len(keys) > MAX_SYNC_KEYS:
        raise ValueError(
            f"{len(keys)} keys is more than the {MAX_SYNC_KEYS} one run takes: "
            f"split them over several runs, or leave keys out to sync every {what}"
        )
    bad = [key for key in keys if not (isinstance(key, str) and valid(key))]
    if bad:
        shown = ", ".join(repr(key) for key in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ValueError(f"{what} ids are {spelled}; not: {shown}")
    return sorted({key.lower() for key in keys})


def _is_object_id(key: str) -> bool:
    return len(key) == 24 and ObjectId.is_valid(key)


def _is_uuid(key: str) -> bool:
    try:
        return str(uuid.UUID(key)) == key.lower()
    except ValueError:
        return False


class SyncOpConfig(dg.Config):
    """Run config every sync takes."""

    dry_run: bool = Field(default=False, description="Plan and report, write nothing")
    #: Unset (None): the pipeline's own setting (SYNC_BATCH_SIZE, CART_SYNC_BATCH_SIZE), its one default.
    batch_size: int | None = Field(default=None, ge=1, le=MAX_BATCH_SIZE, description="Keys per batch and transaction")
    batch_pause_ms: int = Field(default=0, ge=0, le=60_000, description="Pause after each written batch (ms)")
    parallelism: int = Field(
        default=1,
        ge=1,
        le=MAX_PARALLELISM,
        description="Key ranges synced side by side, a step each (1: one step, in the run's own process)",
    )

    def scope(self) -> SyncScope:
        """The keys this run covers."""
        return WHOLE_TABLE

    @classmethod
    def validated(cls, config: dict[str, Any], batch_size: int) -> "SyncOpConfig":
        """`config` (the fields of this model in it) checked, with `batch_size` where it leaves it unset; a bad
        value raises a ValueError that names the field and its allowed range (the config mapping refuses the run
        with it, before the run starts)."""
        fields = {name: config[name] for name in cls.model_fields if config.get(name) is not None}
        try:
            return cls(**{"batch_size": batch_size, **fields})
        except ValidationError as error:
            problems = []
            for problem in error.errors():
                message = problem["msg"].removeprefix("Value error, ")
                if not problem["loc"]:  # a rule over several fields
                    problems.append(message)
                    continue
                name = str(problem["loc"][0])
                problems.append(f"{name}={_shown(fields.get(name))}: {message}{allowed(cls, name)}")
            raise ValueError(f"invalid run config: {'; '.join(problems)}") from None

    @classmethod
    def launch_config(cls, **fields: Any) -> dict[str, Any]:
        """The run config of a run of this model's job, as a sensor requests it: `fields` checked by the model
        now, every other field left to the job's defaults."""
        return cls(**fields).model_dump(exclude_unset=True)


class ProductSyncOpConfig(SyncOpConfig):
    """Run config of the product sync op."""

    keys: list[str] | None = Field(
        default=None,
        description=f"Only these product ids (ObjectId hex), at most {MAX_SYNC_KEYS}; unset: every product",
    )

    @field_validator("keys")
    @classmethod
    def _product_ids(cls, keys: list[str] | None) -> list[str] | None:
        return None if keys is None else _checked_keys(keys, "product", _is_object_id, "24 hex digits (an ObjectId)")

    def scope(self) -> SyncScope:
        return SyncScope.of_keys(self.keys) if self.keys is not None else WHOLE_TABLE


class CartSyncOpConfig(SyncOpConfig):
    """Run config of the cart sync op."""

    user_id: str | None = Field(default=None, min_length=1, description="Only this user's carts, on both sides")
    prune_orphans: bool = Field(default=False, description="Delete Order DB carts that are no longer in the Cart DB")
    keys: list[str] | None = Field(
        default=None, description=f"Only these cart ids (uuids), at most {MAX_SYNC_KEYS}; unset: every cart"
    )
    advance_slot_to: str | None = Field(
        default=None,
        description="After the writes committed, mark the CART_CDC_SLOT changes up to this LSN consumed "
        "(cart_changes_sensor sets it)",
    )

    @field_validator("keys")
    @classmethod
    def _cart_ids(cls, keys: list[str] | None) -> list[str] | None:
        return None if keys is None else _checked_keys(keys, "cart", _is_uuid, "uuids (8-4-4-4-12 hex digits)")

    @field_validator("advance_slot_to")
    @classmethod
    def _lsn(cls, lsn: str | None) -> str | None:
        if lsn is not None and not _LSN.fullmatch(lsn):
            raise ValueError("is not a PostgreSQL LSN (like 0/15302A0)")
        return lsn

    @model_validator(mode="after")
    def _one_scope(self) -> "CartSyncOpConfig":
        if self.user_id is not None and self.keys is not None:
            raise ValueError("give user_id or keys, not both")
        return self

    def scope(self) -> SyncScope:
        if self.keys is not None:
            return SyncScope.of_keys(self.keys)
        return SyncScope.of_user(self.user_id) if self.user_id is not None else WHOLE_TABLE


#: Fields only a cart sync run of its own takes (`full_sync_job` syncs every cart).
KEYED_CART_FIELDS = ("keys", "advance_slot_to")


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


def _shown(value: Any) -> str:
    """A run config value as the refusal quotes it: a long list is cut short."""
    if isinstance(value, list) and len(value) > 3:
        return f"[{', '.join(repr(item) for item in value[:3])}, ... ({len(value)} items)]"
    return repr(value)


def _dagster_type(annotation: Any) -> Any:
    """`bool`, `int`, `str` as they are; `list[X]` as `[X]`; `X | None` as `dg.Noneable(X)`."""
    if get_origin(annotation) in (Union, types.UnionType):
        [inner] = [arg for arg in get_args(annotation) if arg is not type(None)]
        return dg.Noneable(_dagster_type(inner))
    if get_origin(annotation) is list:
        [inner] = get_args(annotation)
        return [_dagster_type(inner)]
    return annotation


def launchpad_schema(
    model: type[dg.Config],
    *,
    leave_out: tuple[str, ...] = (),
    descriptions: dict[str, str] | None = None,
    **defaults: Any,
) -> dict[str, dg.Field]:
    """A job's run config schema from `model`'s fields but `leave_out` (`defaults` and `descriptions` override
    theirs).

    The Launchpad shows each description above its field, so it carries the field's range;
    the bounds themselves are checked by `model` when the config mapping validates a run.
    """
    schema = {}
    for name, field in model.model_fields.items():
        if name in leave_out:
            continue
        if descriptions and name in descriptions:
            schema[name] = dg.Field(
                _dagster_type(field.annotation),
                default_value=defaults.get(name, field.default),
                description=descriptions[name],
            )
            continue
        schema[name] = dg.Field(
            _dagster_type(field.annotation),
            default_value=defaults.get(name, field.default),
            description=f"{field.description}{allowed(model, name)}",
        )
    return schema
