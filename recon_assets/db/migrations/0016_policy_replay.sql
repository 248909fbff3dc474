-- The policy replay (issue 19): what the runbook flags would have done over the recorded
-- history. One row per replay (keyed by the replay's run id) with its range, flags, fidelity and
-- per-profile summary, and one row per event each policy ('live': the flags as recorded;
-- 'replay': the overrides) would have produced. Nothing here touches the trading tables.
CREATE TABLE IF NOT EXISTS recon.policy_replays (
    replay_id         text PRIMARY KEY,
    since             timestamptz,
    until             timestamptz,
    accounts          jsonb NOT NULL DEFAULT '[]'::jsonb,
    profiles          jsonb NOT NULL DEFAULT '[]'::jsonb,
    overrides         jsonb NOT NULL DEFAULT '{}'::jsonb,   -- env name -> value
    live_flags        jsonb NOT NULL DEFAULT '{}'::jsonb,
    replay_flags      jsonb NOT NULL DEFAULT '{}'::jsonb,
    cycles            integer NOT NULL CHECK (cycles >= 0),
    fidelity_ok       boolean NOT NULL,
    first_difference  jsonb,
    differences       integer NOT NULL DEFAULT 0,
    summary           jsonb NOT NULL DEFAULT '[]'::jsonb,
    created_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS recon.policy_replay_events (
    id                bigserial PRIMARY KEY,
    replay_id         text NOT NULL REFERENCES recon.policy_replays (replay_id),
    policy            text NOT NULL CHECK (policy IN ('live', 'replay')),
    exchange_account  text NOT NULL,
    profile_id        text NOT NULL,
    kind              text NOT NULL CHECK (kind IN ('synthetic_exit', 'quarantine',
                                                     'watchdog_pause', 'auto_resume',
                                                     'backfill_go')),
    cycle_id          text NOT NULL,
    at                timestamptz NOT NULL,
    day               date NOT NULL,
    trade_id          text,
    slice_no          integer,
    symbol            text,
    notional_usd      numeric NOT NULL DEFAULT 0,
    heuristic         boolean NOT NULL DEFAULT false,
    duration_s        double precision,          -- a watchdog pause: until it ended (null: open)
    live_cycle_id     text,                      -- a replayed synthetic exit: the live one's cycle
    cycles_from_live  integer,                   -- ... and how many cycles earlier (-) or later
    detail            text NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS policy_replay_events_replay_idx
    ON recon.policy_replay_events (replay_id, profile_id, policy, kind);
