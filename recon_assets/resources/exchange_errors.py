"""The errors of the exchange side: what the snapshot, the probe and the budget raise when a read
cannot be trusted or cannot happen. Plain classes, shared by `exchange` and the adapters."""


class ExchangeFetchError(RuntimeError):
    """A snapshot could not be read completely from the exchange; nothing may be written."""


class ExchangePayloadError(ExchangeFetchError):
    """The exchange answered with a body the snapshot cannot trust (names the field)."""


class ResponseTooLarge(ExchangePayloadError):
    """The exchange's answer is larger than `max_response_bytes`: refused before it is read
    whole (not retried: the same answer would come back)."""


class ExchangeUnknownMarket(ExchangePayloadError):
    """An answer names a symbol the loaded markets do not list: markets are reloaded once (a
    new listing) before this is an error."""


class ExchangeBudgetSpent(ExchangeFetchError):
    """The egress's request-weight budget forbids sending now (spent, Retry-After or ban):
    nothing was sent; the cycle is reported failed and retried once the budget allows."""

    def __init__(self, message: str, spent=None):
        super().__init__(message)
        self.spent = spent


class ExchangeCredentialsError(ExchangeFetchError):
    """RECON_EXCHANGE_CREDENTIALS does not hold usable credentials for an account."""


class ExchangeHostRefused(ExchangeFetchError):
    """RECON_EXCHANGE_API_BASE_URL names a host that is neither loopback (the simulator) nor the
    one RECON_EXCHANGE_API_ALLOWED_HOST names: the API key is never sent there."""
