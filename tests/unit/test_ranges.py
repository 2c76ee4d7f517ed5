"""Key range arithmetic: every key lands in exactly one range, split points cut evenly."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from bson import ObjectId
from hypothesis import given
from hypothesis import strategies as st

from etl_defs.sync import WHOLE_RANGE, KeyRange, SyncScope, even_points, ranges_between, uuid_points

object_ids = st.binary(min_size=12, max_size=12).map(lambda raw: str(ObjectId(raw)))
uuids = st.uuids().map(str)
#: Keys outside the normal alphabets: below and above every hex digit, empty, non-ASCII.
foreign = st.sampled_from(["", "!", "0", "zzz", "ZZZ", "~", "é", "\U0001f600", "-", "g" * 30])
keys = st.one_of(object_ids, uuids, foreign, st.text(max_size=40))


def holders(ranges: list[KeyRange], key: str) -> list[int]:
    return [index for index, key_range in enumerate(ranges) if key in key_range]


@given(points=st.lists(st.one_of(object_ids, uuids, st.text(max_size=10)), max_size=20), key=keys)
def test_every_key_is_in_exactly_one_range(points: list[str], key: str) -> None:
    ranges = ranges_between(points)

    assert len(holders(ranges, key)) == 1
    assert len(ranges) == len(set(points)) + 1
    assert ranges[0].low is None and ranges[-1].high is None


@given(points=st.lists(keys, max_size=20))
def test_ranges_are_contiguous_and_ordered(points: list[str]) -> None:
    ranges = ranges_between(points)

    for left, right in itertools.pairwise(ranges):
        assert left.high == right.low is not None
        assert left.low is None or left.low < left.high  # type: ignore[operator]


@given(sample=st.lists(object_ids, min_size=1, max_size=500, unique=True), parts=st.integers(1, 16))
def test_even_points_cut_the_sample_into_parts_of_nearly_equal_size(sample: list[str], parts: int) -> None:
    ordered = sorted(sample)
    ranges = ranges_between(even_points(ordered, parts))

    sizes = [sum(1 for key in ordered if key in key_range) for key_range in ranges]
    assert sum(sizes) == len(ordered)
    assert len(ranges) <= parts
    if len(ordered) >= parts:
        assert len(ranges) == parts
        assert max(sizes) - min(sizes) <= 1


def test_even_points_of_skewed_object_ids_follow_the_data_not_the_hex_prefixes() -> None:
    # A year of ObjectIds (their first 4 bytes are seconds) spans 3 of the 256 two-hex-digit
    # prefixes: even hex-prefix ranges would put every one of them into the same range.
    start = datetime(2026, 1, 1, tzinfo=UTC)
    year = sorted(str(ObjectId.from_datetime(start + timedelta(hours=hour))) for hour in range(0, 365 * 24, 6))
    assert len({key[:2] for key in year}) <= 3
    assert len(holders(ranges_between(["4", "8", "c"]), year[0])) == 1 and {key[0] for key in year} == {"6"}
    ranges = ranges_between(even_points(year, 4))

    assert [sum(1 for key in year if key in key_range) for key_range in ranges] == [len(year) // 4] * 4


@given(parts=st.integers(1, 64), key=uuids)
def test_uuid_points_cut_the_uuid_space_into_equal_ranges(parts: int, key: str) -> None:
    points = uuid_points(parts)
    bounds = [0, *(uuid.UUID(point).int for point in points), 2**128]
    widths = [high - low for low, high in itertools.pairwise(bounds)]

    assert len(set(points)) == parts - 1
    assert max(widths) - min(widths) <= 1
    assert len(holders(ranges_between(points), key)) == 1


@given(keys_=st.lists(object_ids, min_size=1, max_size=60, unique=True), parts=st.integers(1, 8))
def test_a_keyed_scope_split_at_its_own_quantiles_gives_each_key_to_one_range(keys_: list[str], parts: int) -> None:
    scope = SyncScope.of_keys(keys_)
    ranges = ranges_between(even_points(scope.keys or (), parts))

    chunks = [key for key_range in ranges for chunk in scope.within(key_range).key_chunks(7) for key in chunk]
    assert chunks == sorted(keys_)


def test_a_range_needs_low_below_high_and_says_what_it_covers() -> None:
    with pytest.raises(ValueError, match="low < high"):
        KeyRange("b", "a")
    with pytest.raises(ValueError, match="low < high"):
        KeyRange("a", "a")
    assert KeyRange(None, "6b").describe() == "[start, 6b)"
    assert KeyRange("6b", None).describe() == "[6b, end)"
    assert WHOLE_RANGE.is_whole and not KeyRange("a").is_whole
    assert 5 not in KeyRange()  # only text keys are in a range
    assert SyncScope().within(KeyRange("a", "b")).describe() == "the whole table, keys in [a, b)"
