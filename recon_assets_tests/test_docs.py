"""The docs stay true mechanically: every runbook flag with its default in the configuration
reference, every name of the loaded code location in the operator's guide, and every SQL query of
the guides runs against a migrated database."""

import re
from pathlib import Path

import psycopg
import pytest

from recon_assets.settings import FLAGS

pytestmark = pytest.mark.db

DOCS = Path(__file__).resolve().parent.parent / "docs"
SQL_DOCS = ("analyst-guide.md", "operator-guide.md", "metrics.md", "../README.md")


def _text(name: str) -> str:
    return (DOCS / name).read_text()


def _default(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _sql_blocks(name: str) -> list[str]:
    return re.findall(r"^```sql\n(.*?)^```", _text(name), re.S | re.M)


@pytest.mark.parametrize("flag", FLAGS, ids=lambda f: f.env)
def test_every_flag_is_in_the_configuration_reference_with_its_default(flag):
    rows = [line for line in _text("configuration.md").splitlines()
            if line.startswith(f"| `{flag.env}` |")]
    assert rows, f"{flag.env} is missing from docs/configuration.md"
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[1] == f"`{_default(flag.default)}`", (
        f"{flag.env}: docs say {cells[1]}, settings.FLAGS says {_default(flag.default)}")
    assert flag.expects in rows[0], f"{flag.env}: valid range {flag.expects!r} not in the row"


def test_every_name_of_the_code_location_is_in_the_operator_guide(monkeypatch):
    monkeypatch.setenv("RECON_DATABASE_URL", "postgresql://docs@127.0.0.1:1/docs")
    monkeypatch.setenv("RECON_EXCHANGE_CREDENTIALS", '{"acct1": {"apiKey": "k", "secret": "s"}}')
    from recon_assets.definitions import defs

    repo = defs().get_repository_def()
    names = {key.to_user_string() for key in repo.asset_graph.get_all_asset_keys()}
    names |= {key.name for key in repo.asset_graph.asset_check_keys}
    names |= {job.name for job in repo.get_all_jobs() if not job.name.startswith("__")}
    names |= {schedule.name for schedule in repo.schedule_defs}
    names |= {sensor.name for sensor in repo.sensor_defs}
    assert {"reconciliation_diff", "fresh_and_complete", "reconciliation_cycle",
            "reconciliation_cycle_schedule", "lifecycle_correction_sensor"} <= names
    guide = _text("operator-guide.md")
    missing = sorted(n for n in names if f"`{n}`" not in guide)
    assert not missing, f"not in docs/operator-guide.md: {missing}"


def test_the_guides_have_queries():
    assert len(_sql_blocks("analyst-guide.md")) >= 4
    assert len(_sql_blocks("../README.md")) >= 3


@pytest.mark.parametrize("doc", SQL_DOCS)
def test_every_documented_query_runs_on_a_migrated_database(pg_dsn, doc):
    blocks = _sql_blocks(doc)
    with psycopg.connect(pg_dsn) as conn:
        for sql in blocks:
            try:
                conn.execute(sql).fetchall()
            except psycopg.Error as exc:
                pytest.fail(f"{doc}: query failed: {exc}\n{sql}")
            finally:
                conn.rollback()


def test_the_rule_map_names_files_and_names_that_exist():
    """docs/where-is-the-rule.md: every `file` exists and holds the names before any aside."""
    repo = DOCS.parent
    rows = [line for line in _text("where-is-the-rule.md").split("## Where each runbook flag acts")[0]
            .splitlines() if line.startswith("| ") and not line.startswith(("| rule", "|---"))]
    assert len(rows) >= 30
    for row in rows:
        _rule, file_cell, name_cell = [c.strip() for c in row.strip("|").split("|")]
        (path,) = re.findall(r"`([^`]+)`", file_cell)
        base = repo if path.startswith("recon_assets_tests/") else repo / "recon_assets"
        source = base / path
        assert source.is_file(), f"{path} does not exist"
        text = source.read_text()
        head = re.split(r"\(|, from ", name_cell)[0]
        for name in re.findall(r"`([^`]+)`", head):
            if name != source.name:
                assert name in text, f"{name} is not in {path}"
    flags = _text("where-is-the-rule.md").split("## Where each runbook flag acts")[1]
    for flag in FLAGS:
        assert f"`{flag.env}`" in flags, f"{flag.env} is not in the rule map's flag table"


def test_the_docs_stand_on_their_own_in_a_clone():
    """Nothing in the README or docs/ points outside the repository."""
    for path in [DOCS.parent / "README.md", *sorted(DOCS.glob("*.md"))]:
        assert "../shared" not in path.read_text(), f"{path.name} points outside the repository"
