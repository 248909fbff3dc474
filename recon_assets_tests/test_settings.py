"""Every runbook flag has the runbook's default; every kind of bad value is rejected by name."""

import pytest

from recon_assets.core.watchdog import threshold_usd

from recon_assets.settings import FLAGS, OPERATIONAL_BOUNDS, ReconSettings, SettingsError

pytestmark = pytest.mark.unit

RUNBOOK_DEFAULTS = {
    "ENABLE_RECON_POSITION_PARITY_HEARTBEAT": True,
    "RECON_POSITION_PARITY_CONFIRMATIONS": 3,
    "RECON_POSITION_PARITY_REQUIRE_SUBTAG_ATTRIBUTION": True,
    "RECON_POSITION_PARITY_MAX_NOTIONAL_PCT": 0.5,
    "ENABLE_RECON_WATCHDOG_AUTO_RESUME": True,
    "RECON_WATCHDOG_AUTO_RESUME_MIN_PAUSE_MS": 900000,
    "RECON_WATCHDOG_AUTO_RESUME_CLEAN_CYCLES": 2,
    "RECON_WATCHDOG_AUTO_RESUME_COOLDOWN_MS": 1800000,
    "RECON_POSITION_PARITY_DRY_RUN": False,
    "RECON_EXIT_BACKFILL_REQUIRE_STRONG_ATTRIBUTION": True,
    "RECON_EXIT_BACKFILL_ALLOW_HEURISTIC_MATCH": False,
    "RECON_EXIT_BACKFILL_FILL_AFTER_TRADE_GRACE_MINUTES": 5,
}


def test_every_runbook_flag_is_defined_once():
    assert sorted(f.env for f in FLAGS) == sorted(RUNBOOK_DEFAULTS)


@pytest.mark.parametrize("env_name,default", sorted(RUNBOOK_DEFAULTS.items()))
def test_runbook_default(env_name, default):
    settings = ReconSettings.from_env({})
    field = next(f.field for f in FLAGS if f.env == env_name)
    value = getattr(settings, field)
    assert value == default and type(value) is type(default)


def test_values_are_read_from_the_environment():
    settings = ReconSettings.from_env({
        "RECON_POSITION_PARITY_CONFIRMATIONS": "5",
        "RECON_POSITION_PARITY_DRY_RUN": "TRUE",
        "ENABLE_RECON_POSITION_PARITY_HEARTBEAT": "0",
        "RECON_POSITION_PARITY_MAX_NOTIONAL_PCT": "1.25",
    })
    assert settings.position_parity_confirmations == 5
    assert settings.position_parity_dry_run is True
    assert settings.enable_position_parity_heartbeat is False
    assert settings.position_parity_max_notional_pct == 1.25
    # The unit is percent: 1.25 % of 10,000 USD (core.watchdog.threshold_usd, the one conversion).
    assert threshold_usd(10_000, settings.position_parity_max_notional_pct) == pytest.approx(125.0)


@pytest.mark.parametrize("env_name,value,expects", [
    ("RECON_POSITION_PARITY_CONFIRMATIONS", "abc", "whole number"),
    ("RECON_POSITION_PARITY_CONFIRMATIONS", "0", "whole number >= 1"),
    ("RECON_POSITION_PARITY_CONFIRMATIONS", "2.5", "whole number"),
    ("RECON_POSITION_PARITY_MAX_NOTIONAL_PCT", "-0.1", "percent"),
    ("RECON_POSITION_PARITY_MAX_NOTIONAL_PCT", "0", "percent"),
    ("RECON_POSITION_PARITY_MAX_NOTIONAL_PCT", "100.5", "at most 100"),
    ("RECON_POSITION_PARITY_MAX_NOTIONAL_PCT", "nan", "percent"),
    ("RECON_POSITION_PARITY_DRY_RUN", "maybe", "true or false"),
    ("ENABLE_RECON_WATCHDOG_AUTO_RESUME", "", "true or false"),
    ("RECON_WATCHDOG_AUTO_RESUME_MIN_PAUSE_MS", "-1", "milliseconds >= 0"),
    ("RECON_WATCHDOG_AUTO_RESUME_CLEAN_CYCLES", "0", "whole number >= 1"),
    ("RECON_EXIT_BACKFILL_FILL_AFTER_TRADE_GRACE_MINUTES", "five", "minutes"),
])
def test_bad_value_names_the_variable(env_name, value, expects):
    with pytest.raises(SettingsError) as err:
        ReconSettings.from_env({env_name: value})
    assert env_name in str(err.value)
    assert expects in str(err.value)


def test_every_bad_variable_is_reported_at_once():
    with pytest.raises(SettingsError) as err:
        ReconSettings.from_env({"RECON_POSITION_PARITY_CONFIRMATIONS": "abc",
                                "RECON_POSITION_PARITY_DRY_RUN": "perhaps"})
    assert "RECON_POSITION_PARITY_CONFIRMATIONS" in str(err.value)
    assert "RECON_POSITION_PARITY_DRY_RUN" in str(err.value)


def test_launchpad_configuration_is_checked_too():
    with pytest.raises(Exception, match="RECON_WATCHDOG_AUTO_RESUME_CLEAN_CYCLES"):
        ReconSettings(watchdog_auto_resume_clean_cycles=0)


def test_recon_and_every_subcommand_describe_themselves_with_defaults():
    import subprocess
    import sys

    def help_of(*args):
        out = subprocess.run([sys.executable, "-m", "recon_assets.cli", *args, "--help"],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return " ".join(out.stdout.split())

    top = help_of()
    for command in ("migrate", "simulator", "health", "demo"):
        assert command in top
    assert "$RECON_DATABASE_URL" in help_of("migrate")
    demo = help_of("demo")
    for default in ("default 3000", "default 9187", "default 45", "default .demo/"):
        assert default in demo, default
    health = help_of("health")
    assert "default 127.0.0.1" in health and "default 9187" in health and "default 300" in health
    assert "0 picks a free one" in help_of("simulator")


@pytest.mark.parametrize("field", sorted(OPERATIONAL_BOUNDS))
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0, 10**9, "abc", True])
def test_every_operational_bound_is_finite_and_in_range(field, value):
    """Issue 38: `correction_max_cycle_age_seconds: .nan` switched the stale-evidence check off
    (every comparison with NaN is false)."""
    with pytest.raises(ValueError, match=field):
        ReconSettings(**{field: value})
    low, high = OPERATIONAL_BOUNDS[field]
    assert getattr(ReconSettings(**{field: low}), field) == low
    assert getattr(ReconSettings(**{field: high}), field) == high
