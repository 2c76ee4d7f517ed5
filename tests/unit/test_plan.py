"""The pure merge: every class, batch boundaries, and loud failure on broken order."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from etl_defs.sync import BatchPlan, Change, KeyOrderError, Rejection, plan_batches, row_spec


@dataclass(frozen=True)
class Item:
    key: str
    value: int


def _transform(raw: tuple[str, int | None]) -> Item | Rejection:
    key, value = raw
    if key.startswith("!"):
        return Rejection(key, "unorderable key", ordered=False)
    if value is None:
        return Rejection(key, "no value")
    return Item(key, value)


def _compare(source: Item, target: Item) -> Change:
    if source.value == target.value:
        return Change.UNCHANGED
    return Change.NEWER_IN_TARGET if target.value > source.value + 100 else Change.CHANGED


SPEC = row_spec(
    name="test", transform=_transform, source_key=lambda i: i.key, target_key=lambda i: i.key, compare=_compare
)


def _classes(plans: list[BatchPlan]) -> dict[Change, list[str]]:
    out: dict[Change, list[str]] = {change: [] for change in Change}
    for plan in plans:
        for change in Change:
            out[change].extend(plan.keys(change, SPEC))
    return out


def _batches(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def test_every_class_is_found() -> None:
    source = [("!bad", 1), ("a", 1), ("b", 2), ("c", None), ("d", 4), ("f", 6)]
    target = [Item("a", 1), Item("b", 99), Item("c", 3), Item("d", 500), Item("e", 5), Item("g", 7)]

    classes = _classes(list(plan_batches(SPEC, [source], [target], batch_size=100)))

    assert classes[Change.UNCHANGED] == ["a"]
    assert classes[Change.CHANGED] == ["b"]
    assert classes[Change.REJECTED] == ["!bad", "c"]
    assert classes[Change.NEWER_IN_TARGET] == ["d"]
    assert classes[Change.MISSING] == ["f"]
    assert classes[Change.ORPHANED] == ["e", "g"]
    assert classes[Change.OUTDATED] == []


def test_a_rejected_source_key_consumes_its_target_row_instead_of_orphaning_it() -> None:
    plans = list(plan_batches(SPEC, [[("k", None)]], [[Item("k", 1)]], batch_size=10))

    assert _classes(plans)[Change.ORPHANED] == []
    assert [r.reason for r in plans[0].rejected] == ["no value"]


def test_plans_never_exceed_the_batch_size_even_when_only_orphans_remain() -> None:
    target = [Item(f"k{i:04d}", i) for i in range(25)]

    plans = list(plan_batches(SPEC, [], _batches(target, 7), batch_size=10))

    assert [plan.size for plan in plans] == [10, 10, 5]
    assert _classes(plans)[Change.ORPHANED] == [t.key for t in target]


def test_changed_pairs_carry_both_sides() -> None:
    (plan,) = plan_batches(SPEC, [[("a", 2)]], [[Item("a", 1)]], batch_size=10)

    assert plan.changed == [(Item("a", 2), Item("a", 1))]


@pytest.mark.parametrize(
    ("source", "target", "side", "culprit"),
    [
        ([("b", 1), ("a", 1)], [], "source", "'a' arrived after 'b'"),
        ([("a", 1), ("a", 1)], [], "source", "'a' arrived after 'a'"),
        ([("a", 1)], [Item("c", 1), Item("b", 1)], "target", "'b' arrived after 'c'"),
        # Natural ("A" < "a") is byte order; a locale collation would put "a" before "B".
        ([("a", 1), ("B", 1)], [], "source", "'B' arrived after 'a'"),
    ],
)
def test_keys_out_of_order_fail_loudly_naming_the_keys(source: list, target: list, side: str, culprit: str) -> None:
    with pytest.raises(KeyOrderError, match=rf"^{side} keys out of order: {culprit}"):
        list(plan_batches(SPEC, _batches(source, 1), _batches(target, 1), batch_size=10))


def test_order_is_checked_across_batch_boundaries() -> None:
    with pytest.raises(KeyOrderError, match="'a' arrived after 'b'"):
        list(plan_batches(SPEC, [[("b", 1)], [("a", 1)]], [], batch_size=1))


def test_batch_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="batch_size must be at least 1, got 0"):
        list(plan_batches(SPEC, [], [], batch_size=0))


keys = st.lists(st.text(alphabet="abcdeé😀", min_size=1, max_size=4), unique=True).map(sorted)


@given(source_keys=keys, target_keys=keys, values=st.data(), batch_size=st.integers(1, 7))
def test_every_key_is_classified_exactly_once(
    source_keys: list[str], target_keys: list[str], values: st.DataObject, batch_size: int
) -> None:
    source = [(k, values.draw(st.none() | st.integers(0, 3))) for k in source_keys]
    target = [Item(k, values.draw(st.integers(0, 3))) for k in target_keys]

    plans = list(plan_batches(SPEC, _batches(source, 3), _batches(target, 2), batch_size=batch_size))
    classes = _classes(plans)

    classified = [key for keys_of_class in classes.values() for key in keys_of_class]
    assert sorted(classified) == sorted(set(source_keys) | (set(target_keys) - set(source_keys)))
    assert len(classified) == len(set(classified))
    assert set(classes[Change.ORPHANED]) == set(target_keys) - set(source_keys)
    assert set(classes[Change.MISSING]) == {k for k, v in source if v is not None and k not in target_keys}
    # Memory stays O(batch): a plan holds at most batch_size source keys and batch_size target records.
    paired = (Change.CHANGED, Change.OUTDATED, Change.UNCHANGED, Change.NEWER_IN_TARGET)
    assert all(plan.source_rows <= batch_size for plan in plans)
    assert all(plan.count(Change.ORPHANED) + sum(map(plan.count, paired)) <= batch_size for plan in plans)
