"""Sub-tag attribution: the deterministic client_order_id round-trips, fits Binance's limits, and
every id that is not ours parses to None."""

import re

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from recon_assets.core.attribution import (MAX_LENGTH, Attribution, make_client_order_id,
                                           parse_client_order_id)

pytestmark = pytest.mark.unit

BINANCE_CLIENT_ID = re.compile(r"^[\.A-Z\:/a-z0-9_-]{1,36}$")
ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

sub_tags = st.text(alphabet=ALNUM, min_size=1, max_size=8)
trade_ids = st.text(alphabet=ALNUM + "_-", min_size=1, max_size=20)
intents = st.sampled_from(["ENTRY", "EXIT"])
seqs = st.integers(min_value=1, max_value=99)


@given(sub_tags, trade_ids, intents, seqs)
def test_round_trip_and_binance_limits(sub_tag, trade_id, intent, seq):
    cid = make_client_order_id(sub_tag, trade_id, intent, seq)
    assert len(cid) <= MAX_LENGTH == 36
    assert BINANCE_CLIENT_ID.match(cid)
    assert parse_client_order_id(cid) == Attribution(sub_tag, trade_id, intent, seq)


@pytest.mark.parametrize("args,expected", [
    (("ALP", "t1", "ENTRY", 1), "rc.ALP.t1.E1"),
    (("ALP", "t1", "EXIT", 1), "rc.ALP.t1.X1"),
    (("B2", "trade_2024-06_x", "EXIT", 12), "rc.B2.trade_2024-06_x.X12"),
    (("ABCDEFGH", "A" * 20, "ENTRY", 99), "rc.ABCDEFGH." + "A" * 20 + ".E99"),
])
def test_the_id_is_the_documented_format_and_nothing_else(args, expected):
    """The trading app builds the same ids from the same format (the runbook's `rc.<sub tag>.
    <trade id>.<E|X><seq>`): an id that depended on anything else (a clock, a counter, a hash
    seed) would not be found again by the EXIT backfill or the attribution."""
    assert make_client_order_id(*args) == expected


@given(st.one_of(st.text(max_size=40), st.none(), st.integers(), st.binary(max_size=10)))
def test_anything_not_ours_is_none(value):
    parsed = parse_client_order_id(value)
    if parsed is not None:  # only strings of our exact format parse
        assert isinstance(value, str) and value.startswith("rc.")
        assert make_client_order_id(parsed.sub_tag, parsed.trade_id, parsed.intent, parsed.seq) == value


@given(st.text(alphabet=ALNUM + "_-", min_size=1, max_size=30))
def test_foreign_exchange_ids_are_none(suffix):
    for prefix in ("web_", "ios_", "android_", "autoclose-", "adl_autoclose", "x-cvBPrNm9", "electron_"):
        assert parse_client_order_id(prefix + suffix) is None


@given(st.text(min_size=0, max_size=12), trade_ids, intents, seqs)
def test_bad_sub_tags_are_refused(sub_tag, trade_id, intent, seq):
    assume(not re.fullmatch(r"[A-Za-z0-9]{1,8}", sub_tag))
    with pytest.raises(ValueError):
        make_client_order_id(sub_tag, trade_id, intent, seq)


@given(sub_tags, st.text(min_size=0, max_size=25), intents, seqs)
def test_bad_trade_ids_are_refused(sub_tag, trade_id, intent, seq):
    assume(not re.fullmatch(r"[A-Za-z0-9_-]{1,20}", trade_id))
    with pytest.raises(ValueError):
        make_client_order_id(sub_tag, trade_id, intent, seq)


@given(sub_tags, trade_ids, st.one_of(st.integers(max_value=0), st.integers(min_value=100)))
def test_bad_sequence_numbers_are_refused(sub_tag, trade_id, seq):
    with pytest.raises(ValueError):
        make_client_order_id(sub_tag, trade_id, "ENTRY", seq)


@pytest.mark.parametrize("intent", ["entry", "E", "CLOSE", ""])
def test_bad_intents_are_refused(intent):
    with pytest.raises(ValueError, match="intent"):
        make_client_order_id("ALP", "t1", intent)


@pytest.mark.parametrize("cid", [
    "rc.ALP.t1.E0", "rc.ALP.t1.E100", "rc.ALP.t1.Z1", "rc..t1.E1", "rc.ALP..E1", "RC.ALP.t1.E1",
    "rc.ALP.t1.E1 ", "rc.ALPHABETA.t1.E1", "rc.ALP.t.1.E1", "rc.ALP.t1.E01",
])
def test_near_misses_are_not_ours(cid):
    assert parse_client_order_id(cid) is None


def test_an_id_is_ours_only_when_it_is_exactly_the_format():
    """Issue 38: `$` also matches before a trailing newline; the id must end where it ends."""
    assert parse_client_order_id("rc.P1.t1.X1") is not None
    for value in ("rc.P1.t1.X1\n", "rc.P1.t1.X1\x00", " rc.P1.t1.X1", "xrc.P1.t1.X1"):
        assert parse_client_order_id(value) is None, repr(value)
