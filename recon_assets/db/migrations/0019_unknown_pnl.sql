-- Unknown is never zero (issue item 9): a slice's realised PnL is NULL when a fee booked into it
-- has no USD value (a fee paid in an asset recon could not price at the fill's time: migration
-- 0008 made applied_fills.fee_usd NULL for those), instead of a number that leaves the fee out.
-- The lifecycle handlers (recon._apply_entry_fill, recon._exit_slice) set it; NULL propagates,
-- so no later fill or exit turns it back into a number. pnl_unknown_reason says why; the one
-- reason recon writes is 'fee_unpriced' (the fills are the slice's trade's applied_fills with
-- fee_usd NULL and a fee_amount other than 0).
ALTER TABLE public.trade_history ALTER COLUMN realised_pnl_usd DROP NOT NULL;
ALTER TABLE public.trade_history ADD COLUMN IF NOT EXISTS pnl_unknown_reason text;
-- A NULL PnL always says why. One way only: the trading app, which owns the table, may still
-- write a number over an unknown PnL (a PnL it knows) without also clearing the reason, and
-- that write must not fail.
ALTER TABLE public.trade_history ADD CONSTRAINT trade_history_unknown_pnl_has_a_reason
    CHECK (realised_pnl_usd IS NOT NULL OR pnl_unknown_reason IS NOT NULL);
