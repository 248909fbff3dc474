"""Sub-tag attribution: the deterministic client_order_id every order of ours carries.

Format: ``rc.<sub_tag>.<trade_id>.<intent><seq>``, e.g. ``rc.ALP.t000123.E1``:

- ``rc`` marks the id as ours (anything else is foreign account activity);
- ``sub_tag`` is the profile's tag, 1-8 letters or digits (profiles.sub_tag);
- ``trade_id`` is the trade, 1-20 characters of ``A-Za-z0-9_-`` (no dot);
- ``intent`` is ``E`` (ENTRY) or ``X`` (EXIT), and ``seq`` 1-99 numbers retries/slices.

At most 3 + 9 + 21 + 3 = 36 characters, all within Binance USD-M's ``.A-Za-z0-9:/_-``, so the
exchange echoes it back unchanged and every fill or order can be tied to a profile and a trade.
"""

import re
from dataclasses import dataclass

MAX_LENGTH = 36  # Binance USD-M's limit for newClientOrderId
_PATTERN = re.compile(
    r"^rc\.(?P<sub_tag>[A-Za-z0-9]{1,8})\.(?P<trade_id>[A-Za-z0-9_-]{1,20})\."
    r"(?P<intent>[EX])(?P<seq>[1-9][0-9]?)\Z"  # \Z: `$` would accept a trailing newline
)
_TAGGED = re.compile(r"^rc\.(?P<sub_tag>[A-Za-z0-9]{1,8})\.")
_INTENTS = {"ENTRY": "E", "EXIT": "X"}


@dataclass(frozen=True)
class Attribution:
    sub_tag: str
    trade_id: str
    intent: str  # "ENTRY" or "EXIT"
    seq: int


def make_client_order_id(sub_tag: str, trade_id: str, intent: str, seq: int = 1) -> str:
    """The client_order_id for this profile's order; raises ValueError when it cannot fit."""
    if intent not in _INTENTS:
        raise ValueError(f"intent must be ENTRY or EXIT, not {intent!r}")
    candidate = f"rc.{sub_tag}.{trade_id}.{_INTENTS[intent]}{seq}"
    if not _PATTERN.match(candidate):
        raise ValueError(
            f"cannot build a client_order_id from sub_tag={sub_tag!r}, trade_id={trade_id!r}, "
            f"seq={seq!r}: sub_tag is 1-8 letters/digits, trade_id 1-20 of A-Za-z0-9_-, seq 1-99")
    return candidate


def slice_attribution(sub_tag: object, trade_id: object, client_order_ids: object) -> tuple[bool, str]:
    """Whether a lifecycle slice is attributed to its profile, and why (safety rule 9: evidence,
    not a column): every order of its trade must carry our format with the profile's sub tag and
    the trade's id. A profile having a sub tag proves nothing about a slice."""
    ids = [] if client_order_ids is None else list(client_order_ids)
    if not isinstance(sub_tag, str) or not sub_tag:
        return False, "the profile has no sub tag"
    if not ids:
        return False, "the trade has no order to attribute it by"
    for coid in ids:
        parsed = parse_client_order_id(coid)
        if parsed is None:
            return False, f"order {coid} does not carry sub-tag attribution"
        if parsed.sub_tag != sub_tag or parsed.trade_id != str(trade_id):
            return False, f"order {coid} carries sub tag {parsed.sub_tag} / trade {parsed.trade_id}"
    return True, f"{len(ids)} order(s) carry sub tag {sub_tag}"


def parse_client_order_id(client_order_id: object) -> Attribution | None:
    """The attribution carried by one of our ids, or None for ids that are not ours."""
    if not isinstance(client_order_id, str):
        return None
    match = _PATTERN.match(client_order_id)
    if not match:
        return None
    intent = "ENTRY" if match["intent"] == "E" else "EXIT"
    return Attribution(match["sub_tag"], match["trade_id"], intent, int(match["seq"]))


def tagged_sub_tag(client_order_id: object) -> str | None:
    """The sub tag of an id that starts as ours (``rc.<sub_tag>.``) whatever follows, e.g. an
    emergency close the bot sent with a free-form rest; None for any other id."""
    if not isinstance(client_order_id, str):
        return None
    match = _TAGGED.match(client_order_id)
    return match["sub_tag"] if match else None
