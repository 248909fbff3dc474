"""Fees: kept in their asset, worth their USD value at the fill's time, unknown never zero."""

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from recon_assets.core.fees import Fee, fee_of, needs_price
from recon_assets.core.rules import USD_FEE_CURRENCIES

pytestmark = pytest.mark.unit


def test_a_usd_like_fee_is_its_own_usd_value():
    assert fee_of("0.28", "usdt") == Fee("USDT", Decimal("0.28"), Decimal("0.28"))
    assert not needs_price("USDC") and needs_price("BNB") and not needs_price(None)


def test_a_bnb_fee_is_worth_its_amount_at_the_price_given():
    assert fee_of(0.00046667, "BNB", Decimal("600")) == Fee(
        "BNB", Decimal("0.00046667"), Decimal("0.28000200"))


@pytest.mark.parametrize("price", [None, 0, -1, "not a number", float("nan")])
def test_a_fee_without_a_usable_price_is_unknown_not_zero(price):
    fee = fee_of("0.001", "BNB", price)
    assert fee.asset == "BNB" and fee.amount == Decimal("0.001") and fee.usd is None


def test_no_fee_is_zero_and_a_missing_cost_is_unknown():
    assert fee_of(0, "BNB") == Fee("BNB", Decimal(0), Decimal(0))
    assert fee_of(None, "USDT") == Fee("USDT", None, None)


@given(amount=st.decimals(min_value=Decimal("0.00000001"), max_value=Decimal("1000"), places=8),
       asset=st.sampled_from(sorted(USD_FEE_CURRENCIES) + ["BNB", "XYZ"]),
       price=st.one_of(st.none(), st.decimals(min_value=Decimal("0.01"), max_value=Decimal("1e5"),
                                               places=2)))
def test_the_usd_value_is_known_exactly_when_it_can_be(amount, asset, price):
    fee = fee_of(amount, asset, price)
    assert fee.amount == amount and fee.asset == asset
    if asset in USD_FEE_CURRENCIES:
        assert fee.usd == amount
    elif price is None:
        assert fee.usd is None
    else:
        assert fee.usd == amount * price
