"""The whole book of one position: do an account's open slices add up to what the exchange
holds? One home for the two rules the diff, the parity heartbeat and the EXIT backfill share
(safety rule 13, "judge the whole book"):

- `below_step`: a quantity is less than one quantity step of the market (a whole step is a real
  difference; the relative slack absorbs float noise such as 0.009 - 0.002 - 0.008). Its SQL twin
  `below_step_sql` is what the diff's DuckDB queries say; a test keeps the two equal.
- `judge_leg`: per account, symbol and leg (the symbol's net position in one-way mode, each leg
  in hedge mode) the signed sum S of the open slices (long +, short -) against the exchange's
  signed position E:

  1. no exchange row for the leg: nothing is known, no slice is judged (`unchecked`);
  2. |S - E| below one step and nothing waiting to be booked: the book nets, every slice is
     supported, whatever E is (two profiles long and short 0.5 on a one-way account the
     exchange nets to flat are in sync);
  3. the gap S - E less what real evidence waiting to be booked explains (`explained`: fills of
     orders the database holds, the EXIT backfill's GO fills) is below one step: no ghost, the
     slices with evidence wait for it (`explained`), even when the exchange is flat (the
     waiting fills are what netted it). A gap of zero that waiting fills would open is no
     support: one profile's unbooked entry can net away another's lost exit;
  4. E below one step while S (less what is explained) is not: the exchange is flat, the slices
     claim a position: every open slice of the leg on the side the claim points to is a
     **ghost** (all of them, in a leg of one side); a slice of the other side (one-way mode,
     profiles long and short on one symbol) may be what the exchange's flat netted against, so
     it is **ambiguous**, never a ghost;
  5. otherwise the exchange holds part of what the slices claim and nothing explains the rest:
     no slice is singled out, a slice whose size happens to match the gap is only a guess, so
     every slice of the leg is **ambiguous** (reported, held for an operator, never closed),
     never a ghost.

A ghost is therefore only ever a slice of a leg the exchange holds nothing on; a gap on a leg
the exchange still holds is evidence's or an operator's to explain.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass

from recon_assets.core.rules import QTY_ABS_TOL, STEP_SLACK

# The verdict on one leg (`LegVerdict.state`).
SUPPORTED, FLAT_GHOSTS, EXPLAINED, UNEXPLAINED_GAP, UNCHECKED = LEG_STATES = (
    "supported", "flat", "explained", "ambiguous", "unchecked")


def step_or_tolerance(step: float | None) -> float:
    """The quantity step to judge by: the market's, else the float tolerance."""
    return step if step is not None and step > 0 else QTY_ABS_TOL


def below_step(qty: float, step: float | None) -> bool:
    """|qty| is less than one quantity step (`step` unknown: the float tolerance)."""
    return abs(qty) < step_or_tolerance(step) * (1 - STEP_SLACK)


def below_step_sql(qty: str, step: str) -> str:
    """`below_step` as a SQL expression over the columns `qty` and `step` (DuckDB)."""
    return (f"(abs({qty}) < (CASE WHEN {step} > 0 THEN {step} ELSE {QTY_ABS_TOL!r} END)"
            f" * {1 - STEP_SLACK!r})")


def signed(side: str, qty: float) -> float:
    """An unsigned quantity with its side, signed: long +, short -."""
    return qty if side == "long" else -qty


@dataclass(frozen=True)
class LegVerdict:
    """What the book of one leg says about its open slices."""

    state: str  # one of LEG_STATES
    ghosts: frozenset  # slices the exchange does not hold (state FLAT_GHOSTS)
    ambiguous: frozenset  # slices of a gap no evidence explains (state UNEXPLAINED_GAP)
    claimed: float  # S, the signed sum of the slices
    exchange: float | None  # E, the exchange's signed position (None: no row)
    gap: float  # S - E (0 when unchecked)
    left: float  # the gap less what evidence explains
    why: str


def judge_leg(slices: Mapping[Hashable, float], exchange: float | None, step: float | None,
              explained: float = 0.0, where: str = "the leg") -> LegVerdict:
    """The book of one leg (see the module docstring). `slices`: slice key -> signed open qty;
    `exchange`: the exchange's signed position (None when the snapshot has no row for it);
    `explained`: the signed qty of the gap real evidence waiting to be booked explains (an exit
    fill of a long slice explains +qty, of a short one -qty)."""
    keys = frozenset(slices)
    claimed = float(sum(slices.values()))
    if exchange is None:
        return LegVerdict(UNCHECKED, frozenset(), frozenset(), claimed, None, 0.0, 0.0,
                          f"the exchange snapshot has no row for {where}: not checked")
    gap = claimed - exchange
    left = gap - explained  # what the slices claim beyond the exchange once the waiting is booked
    if below_step(left, step) and below_step(explained, step):
        return LegVerdict(SUPPORTED, frozenset(), frozenset(), claimed, exchange, gap, left,
                          f"the open slices on {where} add up to the exchange's {exchange:g}")
    if below_step(left, step):  # even a flat exchange: the waiting fills are what netted it
        return LegVerdict(EXPLAINED, frozenset(), frozenset(), claimed, exchange, gap, left,
                          f"the exchange holds {exchange:g} on {where} against {claimed:g} "
                          f"claimed; real fills waiting to be booked explain the "
                          f"{gap:g} difference")
    if below_step(exchange, step):
        # The slices on the side the claim points to are gone; in one-way mode a slice of the
        # other side may be what the flat position netted against: no fact, so ambiguous.
        ghosts = frozenset(k for k, qty in slices.items() if qty * left > 0)
        return LegVerdict(FLAT_GHOSTS, ghosts, keys - ghosts, claimed, exchange, gap, left,
                          f"the exchange is flat on {where} while its open slices claim "
                          f"{claimed:g}")
    return LegVerdict(UNEXPLAINED_GAP, frozenset(), keys, claimed, exchange, gap, left,
                      f"the exchange holds {exchange:g} on {where} against {claimed:g} claimed "
                      f"and {left:g} of the difference is explained by no real fill; no slice "
                      "is singled out by its size")
