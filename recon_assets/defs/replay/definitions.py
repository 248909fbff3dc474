import dagster as dg

from recon_assets.defs.replay.assets import policy_replays

# Launched by hand from the Launchpad (a range, accounts or profiles, overrides); no schedule.
# Its tag is what the run queue limits to one replay at a time (dagster.yaml, deploy/).
policy_replay_job = dg.define_asset_job("policy_replay", selection=[policy_replays],
                                        tags={"recon/job": "policy_replay"},
                                        description="What other runbook flags would have done "
                                                    "over the recorded history (nothing applied).")


def defs() -> dg.Definitions:
    return dg.Definitions(assets=[policy_replays], jobs=[policy_replay_job])
