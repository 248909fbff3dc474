-- Alerts that arrive once and say the truth (issue 14): each alert's delivery has a status
-- (`pending` until the webhook answered 2xx, then `delivered`; `not_configured` when no webhook
-- is set; `given_up` after the last retry), its attempts and when the next one is due. A row is
-- recorded before it is posted, so a crash in between leaves it pending for the next tick.
ALTER TABLE recon.alerts
    ADD COLUMN delivery_status  text NOT NULL DEFAULT 'pending'
        CHECK (delivery_status IN ('pending', 'delivered', 'not_configured', 'given_up')),
    ADD COLUMN attempts         integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    ADD COLUMN last_attempt_at  timestamptz,
    ADD COLUMN next_attempt_at  timestamptz;
-- Rows from before: delivered when the webhook took them, failed ones are retried, and the
-- others were recorded without a webhook.
UPDATE recon.alerts SET delivery_status = CASE
    WHEN delivered_at IS NOT NULL THEN 'delivered'
    WHEN delivery_error IS NOT NULL THEN 'pending'
    ELSE 'not_configured' END;
CREATE INDEX IF NOT EXISTS alerts_pending_idx ON recon.alerts (next_attempt_at)
    WHERE delivery_status = 'pending';
