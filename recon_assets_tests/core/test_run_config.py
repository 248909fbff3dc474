"""`core.run_config`: what a run's config may not set (issue 38)."""

import pytest

from recon_assets.core.run_config import (RunConfigRefused, refuse_unsafe_run_config,
                                          run_config_violations)

pytestmark = pytest.mark.unit


def test_op_config_in_plain_text_and_no_config_are_accepted():
    assert run_config_violations(None) == [] and run_config_violations({}) == []
    plain = {"ops": {"resume_profile_op": {"config": {"profile_id": "beta", "reason": "env"}}},
             "execution": {"config": {"in_process": {}}}}
    assert run_config_violations(plain) == []
    refuse_unsafe_run_config(plain)  # no exception


def test_every_resource_override_and_every_env_source_is_named_by_path():
    config = {"resources": {"settings": {"config": {"position_parity_dry_run": False}},
                            "exchange": {"config": {"credentials": {"env": "X"}}}},
              "ops": {"note_op": {"config": {"note": {"env": "RECON_EXCHANGE_CREDENTIALS"},
                                             "ids": ["a", {"env": "Y"}]}}}}
    assert run_config_violations(config) == [
        "resources.exchange", "resources.settings", "ops.note_op.config.note",
        "ops.note_op.config.ids[1]"]


def test_the_refusal_names_paths_never_values():
    with pytest.raises(RunConfigRefused) as refused:
        refuse_unsafe_run_config({"resources": {"exchange": {"config": {
            "api_base_url": "http://other-host.invalid"}}}}, "reconciliation_cycle")
    message = str(refused.value)
    assert "run of reconciliation_cycle" in message and "resources.exchange" in message
    assert "other-host" not in message
    # A mapping with more keys than `env` is data, not an environment source.
    assert run_config_violations({"ops": {"o": {"config": {"m": {"env": "x", "k": 1}}}}}) == []
