-- The account's latest cycle recorded with p_status (succeeded), or the cycle p_cycle_id if it
-- is one, with the age of its evidence in seconds by the database clock: from the earlier of its
-- two snapshot reads (from when it finished, for a cycle recorded without them). No row when
-- there is none (ReconStore.latest_succeeded_cycle).
CREATE OR REPLACE FUNCTION public.recon_latest_succeeded_cycle(
    p_account text, p_status text, p_cycle_id text DEFAULT '')
RETURNS TABLE (cycle_id text, exchange_account text, finished_at timestamptz,
               db_read_at timestamptz, exchange_read_at timestamptz, age_s double precision)
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = ''
AS $$
    SELECT c.cycle_id, c.exchange_account, c.finished_at, c.db_read_at, c.exchange_read_at,
           extract(epoch FROM now() - LEAST(COALESCE(c.db_read_at, c.finished_at),
                                            COALESCE(c.exchange_read_at, c.finished_at)))::float8
    FROM recon.cycles c
    WHERE c.exchange_account = p_account AND c.status = p_status
      AND (p_cycle_id = '' OR c.cycle_id = p_cycle_id)
    ORDER BY c.finished_at DESC LIMIT 1;
$$;
