"""Which trading-database store the code location builds from its configuration (issue 17):
`RECON_DATABASE_URL` (psycopg) or `RECON_SUPABASE_URL` + `RECON_SUPABASE_SERVICE_ROLE_KEY`
(the Data API); half of the pair, or both paths, is an error that names variables, never values."""

import dagster as dg
import pytest

from recon_assets.definitions import trading_database
from recon_assets.resources.database import PostgresStore
from recon_assets.resources.supabase_store import SupabaseStore
from recon_assets.settings import SettingsError

pytestmark = pytest.mark.unit

SECRET = "service-role-key-not-to-print"
NAMES = ("RECON_DATABASE_URL", "RECON_SUPABASE_URL", "RECON_SUPABASE_SERVICE_ROLE_KEY")


@pytest.fixture
def env(monkeypatch):
    for name in NAMES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_a_database_url_gives_the_psycopg_store(env):
    env.setenv("RECON_DATABASE_URL", "postgresql://u:pw@db:5432/trading")
    store = trading_database()
    assert type(store) is PostgresStore
    assert store.dsn == dg.EnvVar("RECON_DATABASE_URL")  # read at run time, not here


def test_the_supabase_pair_gives_the_data_api_store(env):
    env.setenv("RECON_SUPABASE_URL", "https://abc.supabase.co")
    env.setenv("RECON_SUPABASE_SERVICE_ROLE_KEY", SECRET)
    store = trading_database()
    assert type(store) is SupabaseStore
    assert store.service_key == dg.EnvVar("RECON_SUPABASE_SERVICE_ROLE_KEY")
    assert SECRET not in repr(store)


@pytest.mark.parametrize("present, expected", [
    (("RECON_SUPABASE_URL",), "RECON_SUPABASE_SERVICE_ROLE_KEY is not set"),
    (("RECON_SUPABASE_SERVICE_ROLE_KEY",), "RECON_SUPABASE_URL is not set"),
    (NAMES, "not both"),
    (("RECON_DATABASE_URL", "RECON_SUPABASE_SERVICE_ROLE_KEY"), "not both"),
])
def test_half_a_configuration_or_both_is_a_clear_error(env, present, expected):
    for name in present:
        env.setenv(name, SECRET)
    with pytest.raises(SettingsError) as error:
        trading_database()
    assert expected in str(error.value) and SECRET not in str(error.value)


def test_nothing_set_still_loads_with_the_psycopg_store(env):
    assert type(trading_database()) is PostgresStore
