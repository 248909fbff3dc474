"""Fees as the exchange charged them, and what they were worth in USD at the fill's time.

A fee keeps its asset and amount. Its USD value is the amount itself for the USD-like assets of
`core.rules.USD_FEE_CURRENCIES`, the amount times the asset's USD price at the fill's time when
the caller found one, and unknown (None) otherwise: an unknown fee is never booked as zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from recon_assets.core.rules import USD_FEE_CURRENCIES


@dataclass(frozen=True)
class Fee:
    asset: str | None
    amount: Decimal | None
    usd: Decimal | None  # None: unknown (no price of the asset at the fill's time)


def _decimal(value: Any) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        result = Decimal(repr(value)) if isinstance(value, float) else Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return result if result.is_finite() else None


def needs_price(asset: str | None) -> bool:
    """Whether a fee in `asset` needs a price lookup to be worth something in USD."""
    return bool(asset) and asset.upper() not in USD_FEE_CURRENCIES


def fee_of(cost: Any, asset: str | None, asset_price_usd: Any = None) -> Fee:
    """The fee of one fill: ccxt's `fee.cost` and `fee.currency`, and the USD price of that
    currency at the fill's time when one is known."""
    amount = _decimal(cost)
    asset = str(asset).upper() if asset else None
    if amount is None:
        return Fee(asset, None, None)
    if amount == 0:
        return Fee(asset, amount, Decimal(0))
    if asset in USD_FEE_CURRENCIES:
        return Fee(asset, amount, amount)
    price = _decimal(asset_price_usd)
    if asset is None or price is None or price <= 0:
        return Fee(asset, amount, None)
    return Fee(asset, amount, amount * price)
