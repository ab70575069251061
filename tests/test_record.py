"""Times in output files: RFC 3339 in UTC with milliseconds."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from state.record import format_time

YEAR_2100_MS = 4_102_444_800_000


@given(st.integers(min_value=0, max_value=YEAR_2100_MS - 1))
def test_format_time_agrees_with_the_standard_library(ts_ms: int) -> None:
    moment = datetime.fromtimestamp(ts_ms // 1000, UTC)
    expected = f"{moment:%Y-%m-%dT%H:%M:%S}.{ts_ms % 1000:03d}Z"

    assert format_time(ts_ms) == expected


def test_format_time_of_known_instants() -> None:
    assert format_time(0) == "1970-01-01T00:00:00.000Z"
    assert format_time(852_076_800_000 + 36_000_123) == "1997-01-01T10:00:00.123Z"
    assert format_time(YEAR_2100_MS - 1) == "2099-12-31T23:59:59.999Z"


def test_no_time_formats_as_none() -> None:
    assert format_time(-1) is None
