"""A run worker of its own: runs the lifecycle_correction job once, in this process, against the
Dagster instance of $DAGSTER_HOME (shared run storage in Postgres, as a deployment's run workers
share it), and prints the outcome as one JSON line. Used by the concurrency test, which starts
several at once.

    python -m recon_assets_tests.harness.correction_worker DSN SIM_URL CREDENTIALS_JSON REQUEST_JSON
"""

import json
import sys
import warnings


def main(argv: list[str]) -> int:
    import dagster as dg

    from recon_assets.definitions import build_defs
    from recon_assets.resources.alerts import AlertWebhook
    from recon_assets.resources.database import PostgresStore
    from recon_assets.resources.exchange import ExchangeResource
    from recon_assets.resources.io_manager import PostgresFrameIOManager
    from recon_assets.settings import ReconSettings

    warnings.filterwarnings("ignore")
    dsn, sim_url, credentials, request = argv[0], argv[1], argv[2], json.loads(argv[3])
    store = PostgresStore(dsn=dsn)
    defs = build_defs({
        "settings": ReconSettings(), "database": store, "alert_webhook": AlertWebhook(),
        "io_manager": PostgresFrameIOManager(database=store),
        "exchange": ExchangeResource(credentials=credentials, api_base_url=sim_url,
                                     max_attempts=2, backoff_initial_s=0.05, backoff_max_s=0.2)})
    with dg.DagsterInstance.get() as instance:
        result = defs.resolve_job_def("lifecycle_correction").execute_in_process(
            run_config=request["run_config"], instance=instance, tags=request["tags"],
            partition_key=request["partition_key"], raise_on_error=False)
        if result.success:
            out = {"success": True, "outcomes": result.output_for_node("correct_profile")["outcomes"]}
        else:
            out = {"success": False, "error": "\n".join(
                e.event_specific_data.error.to_string() for e in result.get_step_failure_events())}
    print("RESULT " + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
