import psycopg
import pytest


@pytest.fixture
def db(pg_dsn):
    """An autocommit connection to a fresh database holding two profiles on acct1: alpha
    (10,000 USD allocated) and beta (5,000)."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO profiles (id, exchange_account, sub_tag, allocated_capital_usd) "
                     "VALUES ('alpha', 'acct1', 'ALP', 10000), ('beta', 'acct1', 'BET', 5000)")
        yield conn
