-- The watchdog charges a profile its own fills of orders the database never recorded (sub-tag
-- attributed, not booked): recorded per verdict, beside what it charged for orders and positions
-- (public.recon_record_watchdog, the policy replay's history).
ALTER TABLE recon.watchdog_checks ADD COLUMN unrecorded_fills_usd numeric NOT NULL DEFAULT 0;
