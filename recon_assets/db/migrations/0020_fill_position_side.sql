-- Hedge fills know their leg (issue item 11): the position each exchange fill traded, Binance's
-- positionSide in the words of core.rules.POSITION_LEGS: 'both' in one-way mode, 'long' or
-- 'short' per leg in hedge mode (a sell on 'short' opened a short; only a sell on 'long' or a
-- buy on 'short' closes). Null for a fill stored before this migration: its leg was not kept.
-- The database cannot tell which accounts are in hedge mode (the exchange snapshot learns it
-- each cycle from the positions), so old rows are not guessed here: the snapshot reads a null
-- leg as 'both' on a one-way account and as unknown on a hedge-mode one
-- (core.frames.with_fill_legs), and a fill read again from the exchange fills its leg in
-- (public.recon_save_and_read_fill_window). Old rows leave the fills window after
-- fills_window_hours.
ALTER TABLE recon.exchange_fills ADD COLUMN position_side text
    CHECK (position_side IN ('both', 'long', 'short'));
