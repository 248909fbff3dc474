"""Connection and exchange errors never carry a secret: one function reports every failed
database connection (`resources.database.connection_failure`), one scrubs every exchange error
(`resources.exchange.scrub_exchange_error`); `recon migrate` prints one line for each."""

import subprocess
import sys

import pytest

from recon_assets.resources.database import PostgresStore, connection_failure
from recon_assets.resources.exchange import scrub_exchange_error

pytestmark = pytest.mark.unit

PASSWORD = "Pw-7f3c9a"
CASES = [
    # (URL, what the message says after "at")
    (f"postgres//bob:{PASSWORD}@db.example/trading",
     "<postgres>: not a postgresql:// URL (no scheme)"),
    (f"mysql://bob:{PASSWORD}@db.example/trading",
     "<postgres>: not a postgresql:// URL (its scheme is 'mysql')"),
    (f"postgresql://bob:{PASSWORD}@127.0.0.1:1/trading?connect_timeout=2",
     "127.0.0.1:1/trading: connection refused"),
    (f"postgresql://bob:{PASSWORD}@127.0.0.1:1/trading?sslmode=bogus",
     '127.0.0.1:1/trading: connection is bad: invalid sslmode value: "bogus"'),
]


@pytest.mark.parametrize("url,says", CASES)
def test_every_entry_point_reports_a_failed_connection_the_same_way_without_the_url(url, says):
    expected = f"cannot connect to the database at {says}"
    with pytest.raises(ConnectionError) as err:
        with PostgresStore(dsn=url).connect():
            pass
    assert str(err.value) == expected
    cli = subprocess.run([sys.executable, "-m", "recon_assets.cli", "migrate", "--dsn", url],
                         capture_output=True, text=True, timeout=60)
    assert cli.returncode == 1
    assert cli.stdout == "" and cli.stderr == f"recon migrate: {expected}\n"  # one line, no traceback
    assert PASSWORD not in cli.stderr and "\t" not in cli.stderr


def test_a_message_quoting_the_url_loses_every_part_of_it():
    url = f"postgresql://bob:{PASSWORD}@h.example:6543/db"
    failure = connection_failure(url, RuntimeError(
        f'connection failed: connection to server at "h.example" ({url}), port 6543 failed: '
        f'FATAL:  password authentication failed for user "bob:{PASSWORD}"\n\tmore'))
    assert PASSWORD not in str(failure)
    assert str(failure).startswith("cannot connect to the database at h.example:6543/db: "
                                   "password authentication failed")


def test_exchange_errors_lose_the_signature_and_the_account_s_key_and_secret():
    raw = ("binanceusdm GET https://fapi.example/fapi/v1/order?symbol=BTCUSDT&orderId=1"
           "&timestamp=1700000000000&signature=9f86d081884c7d659a2feaa0c55ad015 400 "
           '{"code":-2013,"msg":"Order does not exist."} apiKey=simkeyA secret: s3cr3tB '
           "headers {'X-MBX-APIKEY': 'simkeyA'}")
    clean = scrub_exchange_error(raw, "simkeyA", "s3cr3tB")
    for secret in ("9f86d081884c7d659a2feaa0c55ad015", "simkeyA", "s3cr3tB"):
        assert secret not in clean
    assert "Order does not exist" in clean and "orderId=1" in clean
