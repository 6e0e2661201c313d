"""INTERNALDATE parsing on the body-fetch fast path: the same instant as imapclient's parser
(which it replaced there for speed), None for what is not a date."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st
from imapclient.datetime_util import datetime_to_INTERNALDATE, parse_to_datetime

from syncd.imap.client import parse_internaldate


@pytest.mark.parametrize("text", [b"17-Jul-1996 02:44:25 -0700", b" 5-Mar-2024 10:11:12 +0100",
                                  b"01-jan-2000 00:00:00 +1345", b"31-Dec-1999 23:59:59 +0000"])
def test_same_instant_as_imapclient(text: bytes) -> None:
    parsed = parse_internaldate(text)
    assert parsed is not None and parsed.tzinfo is not None
    assert parsed.timestamp() == parse_to_datetime(text).timestamp()


@given(st.datetimes(min_value=dt.datetime(1971, 1, 1), max_value=dt.datetime(2100, 1, 1)),
       st.integers(min_value=-12 * 60, max_value=14 * 60))
def test_round_trip(when: dt.datetime, offset: int) -> None:
    aware = when.replace(microsecond=0, tzinfo=dt.timezone(dt.timedelta(minutes=offset)))
    text = datetime_to_INTERNALDATE(aware).encode()
    assert parse_internaldate(text) == aware


@pytest.mark.parametrize("text", [b"31-Feb-2024 10:11:12 +0100", b"garbage", b"",
                                  b"01-Foo-2024 10:11:12 +0100", b"01-Jan-2024 25:00:00 +0000"])
def test_not_a_date_is_none(text: bytes) -> None:
    assert parse_internaldate(text) is None
