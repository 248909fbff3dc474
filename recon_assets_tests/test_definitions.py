"""The whole code location loads, validates, and every definition in it is described."""

import ast
import importlib
import pathlib
import re
import subprocess
import sys

import dagster as dg
import pytest

import recon_assets
from recon_assets.definitions import defs as load_defs
from recon_assets.definitions import domains
from recon_assets.settings import SettingsError

PACKAGE = pathlib.Path(recon_assets.__file__).parent
REPO = PACKAGE.parent


@pytest.fixture(scope="module")
def defs() -> dg.Definitions:
    return load_defs()


@pytest.mark.unit
def test_code_location_loads_and_validates(defs):
    dg.Definitions.validate_loadable(defs)
    assert defs.resolve_all_asset_specs(), "the code location defines no assets"


@pytest.mark.unit
def test_every_asset_has_a_business_description_and_group(defs):
    for spec in defs.resolve_all_asset_specs():
        assert spec.description and spec.description.strip(), f"{spec.key} has no description"
        assert "\n" not in spec.description.strip(), f"{spec.key}: keep the docstring to one line"
        assert spec.group_name != "default", f"{spec.key} is not in a domain group"


@pytest.mark.unit
def test_every_sensor_and_schedule_has_a_description(defs):
    for sensor in defs.sensors or []:
        assert sensor.description, f"sensor {sensor.name} has no description"
    for schedule in defs.schedules or []:
        assert schedule.description, f"schedule {schedule.name} has no description"


@pytest.mark.unit
def test_every_asset_check_has_a_description(defs):
    for check_key in defs.resolve_asset_graph().asset_check_keys:
        spec = defs.resolve_asset_graph().get_check_spec(check_key)
        assert spec.description, f"check {check_key.to_user_string()} has no description"


@pytest.mark.unit
def test_the_cycle_runs_the_runbooks_two_rules_as_checks_on_the_heartbeat(defs):
    """The design card: asset checks encode the watchdog threshold (blocking, ERROR) and the
    auto-resume clean-cycle rule; both run in every reconciliation cycle."""
    graph = defs.resolve_asset_graph()
    heartbeat = dg.AssetKey("position_parity_heartbeat")
    watchdog = graph.get_check_spec(dg.AssetCheckKey(heartbeat, "integrity_watchdog"))
    resume = graph.get_check_spec(dg.AssetCheckKey(heartbeat, "watchdog_auto_resume"))
    assert watchdog.blocking and not resume.blocking
    cycle = defs.resolve_job_def("reconciliation_cycle")
    steps = {node.name for node in cycle.graph.node_defs}
    assert {"position_parity_heartbeat_integrity_watchdog",
            "position_parity_heartbeat_watchdog_auto_resume"} <= steps


@pytest.mark.unit
def test_the_cycle_finds_exit_fills_before_the_heartbeat_decides(defs):
    """Evidence first: the EXIT backfill's candidates are decided in the cycle, upstream of the
    heartbeat; its GO rows are booked by the sensor-launched exit_backfill job."""
    graph = defs.resolve_asset_graph()
    candidates = dg.AssetKey("exit_backfill_candidates")
    assert candidates in graph.get(dg.AssetKey("position_parity_heartbeat")).parent_keys
    cycle = defs.resolve_job_def("reconciliation_cycle")
    assert "exit_backfill_candidates" in {node.name for node in cycle.graph.node_defs}
    assert defs.get_sensor_def("exit_backfill_sensor").job_name == "exit_backfill"
    for job in ("exit_backfill", "approve_backfill", "reject_backfill"):
        assert defs.resolve_job_def(job).description


@pytest.mark.unit
def test_every_job_has_a_description(defs):
    for job in defs.resolve_all_job_defs():
        if job.name.startswith("__"):
            continue
        assert job.description, f"job {job.name} has no description"


@pytest.mark.unit
def test_bad_flag_stops_the_code_location_loading(monkeypatch):
    monkeypatch.setenv("RECON_POSITION_PARITY_CONFIRMATIONS", "abc")
    with pytest.raises(SettingsError, match="RECON_POSITION_PARITY_CONFIRMATIONS"):
        load_defs()


@pytest.mark.integration
def test_dagster_cli_validates_the_workspace(tmp_path):
    """With nothing set (a fresh clone) and configured as a deployment, the workspace validates;
    a deployment without usable exchange credentials fails at load, naming the variable."""
    base = {"PATH": str(pathlib.Path(sys.executable).parent), "DAGSTER_HOME": str(tmp_path),
            "HOME": str(tmp_path)}
    deployment = {"RECON_DATABASE_URL": "postgresql://u@127.0.0.1:1/db",
                  "RECON_EXCHANGE_CREDENTIALS": '{"acct1": {"apiKey": "k1", "secret": "s1"}}'}

    def validate(env):
        return subprocess.run(
            [str(pathlib.Path(sys.executable).parent / "dagster"), "definitions", "validate",
             "-w", str(REPO / "workspace.yaml")],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)

    for env in (base, {**base, **deployment}):
        result = validate(env)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "All code locations passed validation" in result.stdout + result.stderr
    broken = validate({**base, **deployment, "RECON_EXCHANGE_CREDENTIALS": '{"acct1": {"apiKey": "k1"'})
    assert broken.returncode != 0
    assert "RECON_EXCHANGE_CREDENTIALS is not valid JSON" in broken.stdout + broken.stderr
    assert '"k1"' not in broken.stdout + broken.stderr


@pytest.mark.unit
def test_a_deployment_without_usable_exchange_credentials_stops_loading(monkeypatch):
    monkeypatch.setenv("RECON_DATABASE_URL", "postgresql://u@127.0.0.1:1/db")
    for value, says in ((None, "is not set"), ("nope", "is not valid JSON"),
                        ('{"acct1": {"apiKey": "k"}}', "not so for: acct1"), ("{}", "must map")):
        if value is None:
            monkeypatch.delenv("RECON_EXCHANGE_CREDENTIALS", raising=False)
        else:
            monkeypatch.setenv("RECON_EXCHANGE_CREDENTIALS", value)
        with pytest.raises(SettingsError, match="RECON_EXCHANGE_CREDENTIALS") as err:
            load_defs()
        assert says in str(err.value)


@pytest.mark.unit
def test_core_logic_never_imports_dagster():
    for path in (PACKAGE / "core").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert not name.startswith("dagster"), f"{path.name} imports {name}"


@pytest.mark.integration
def test_module_import_reads_no_environment(monkeypatch):
    """Importing the code location must not read flags: only the loader does."""
    monkeypatch.setenv("RECON_POSITION_PARITY_CONFIRMATIONS", "abc")
    result = subprocess.run([sys.executable, "-c", "import recon_assets.definitions"],
                            capture_output=True, text=True,
                            env={"RECON_POSITION_PARITY_CONFIRMATIONS": "abc", "PATH": ""})
    assert result.returncode == 0, result.stderr


@pytest.mark.unit
def test_every_domain_folder_is_loaded_and_contributes(defs):
    folders = sorted(p.name for p in (PACKAGE / "defs").iterdir()
                     if p.is_dir() and (p / "__init__.py").exists())
    assert domains() == folders
    graph = defs.resolve_asset_graph()
    loaded_assets = {k.to_user_string() for k in graph.get_all_asset_keys()}
    loaded_jobs = {j.name for j in defs.resolve_all_job_defs()}
    loaded_sensors = {s.name for s in defs.sensors or []}
    loaded_schedules = {s.name for s in defs.schedules or []}
    for name in folders:
        own = importlib.import_module(f"recon_assets.defs.{name}.definitions").defs()
        assets = {k.to_user_string() for s in own.assets or []
                  for k in (s.keys if hasattr(s, "keys") else [s.key])}
        jobs = {j.name for j in own.jobs or []}
        sensors = {s.name for s in own.sensors or []}
        schedules = {s.name for s in own.schedules or []}
        assert assets | jobs | sensors | schedules, f"domain {name} defines nothing"
        assert assets <= loaded_assets and jobs <= loaded_jobs
        assert sensors <= loaded_sensors and schedules <= loaded_schedules


_SQL = re.compile(r"\b(SELECT\s.+\sFROM|INSERT\s+INTO|UPDATE\s+\w[\w.]*\s+SET|DELETE\s+FROM)\b",
                  re.I | re.S)


@pytest.mark.unit
def test_defs_hold_only_dagster_definitions_and_no_sql():
    for path in sorted((PACKAGE / "defs").rglob("*.py")):
        tree = ast.parse(path.read_text())
        imports = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        if path.name != "__init__.py":
            assert "dagster" in imports, f"{path.relative_to(PACKAGE)} is not a Dagster module: " \
                                         "plain logic belongs in core/, I/O in resources/"
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert not _SQL.search(node.value), (
                    f"{path.relative_to(PACKAGE)}:{node.lineno} has inline SQL; put it in a "
                    "store under resources/")
