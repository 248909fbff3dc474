-- The latest value of each snapshot asset partition, for the IO manager
-- (resources/io_manager.py), in recon.asset_values; the parquet bytes travel as base64 text so
-- that both backends (psycopg, and rpc() through the Data API, which speaks JSON) pass them
-- the same way:
--   public.recon_store_asset_value(...)  stores (replaces) one partition's value
--   public.recon_asset_value(...)        the stored value as base64, or NULL if never stored
CREATE OR REPLACE FUNCTION public.recon_store_asset_value(
    p_asset_key text, p_partition_key text, p_run_id text, p_payload_base64 text)
RETURNS void
LANGUAGE sql
SECURITY DEFINER
SET search_path = ''
AS $$
    INSERT INTO recon.asset_values (asset_key, partition_key, run_id, payload)
    VALUES (p_asset_key, p_partition_key, p_run_id, decode(p_payload_base64, 'base64'))
    ON CONFLICT (asset_key, partition_key) DO UPDATE
        SET run_id = EXCLUDED.run_id, payload = EXCLUDED.payload, stored_at = now();
$$;

CREATE OR REPLACE FUNCTION public.recon_asset_value(p_asset_key text, p_partition_key text)
RETURNS text
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = ''
AS $$
    SELECT encode(v.payload, 'base64') FROM recon.asset_values v
    WHERE v.asset_key = p_asset_key AND v.partition_key = p_partition_key;
$$;
