"""Issue 38: the exchange's API key is sent to a loopback host (the simulator) or the exchange's
own URLs, never to a host a base URL names unless RECON_EXCHANGE_API_ALLOWED_HOST names it."""

import json

import pytest

from recon_assets.resources.exchange import ExchangeResource, check_api_host
from recon_assets.resources.exchange_errors import ExchangeHostRefused

pytestmark = pytest.mark.unit

CREDENTIALS = json.dumps({"acct1": {"apiKey": "host-test-key", "secret": "host-test-secret"}})


@pytest.mark.parametrize("url", ["http://127.0.0.1:8765", "http://localhost:1", "http://[::1]:9",
                                 "http://127.3.2.1"])
def test_loopback_hosts_are_accepted(url):
    check_api_host(url, None)


@pytest.mark.parametrize("url", ["http://other-host.invalid", "https://10.0.0.5:443",
                                 "http://127.0.0.1.evil.example", "not a url"])
def test_any_other_host_is_refused_before_a_client_exists(url):
    with pytest.raises(ExchangeHostRefused, match="not loopback") as refused:
        ExchangeResource(credentials=CREDENTIALS, api_base_url=url).build_client("acct1")
    assert "host-test-key" not in str(refused.value)


def test_the_one_host_the_deployment_names_is_accepted():
    resource = ExchangeResource(credentials=CREDENTIALS, api_base_url="http://proxy.internal:80",
                                api_allowed_host="PROXY.internal")
    assert resource.build_client("acct1").urls["api"]  # built, pointed at the named host
    with pytest.raises(ExchangeHostRefused):
        check_api_host("http://other.internal", "proxy.internal")
