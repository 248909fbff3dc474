"""A loopback exchange that speaks the Binance USD-M futures REST dialect ccxt's `binanceusdm` uses.

- `state.SimExchange`: markets, accounts, orders, fills and positions (a position is always the
  signed sum of its fills), rendered field for field like Binance's responses.
- `server.SimulatorServer`: the HTTP server (`ThreadingHTTPServer`), HMAC-SHA256 request
  verification, fault injection and the `/_control/...` surface. `recon simulator --port P`.
- `scenarios`: named setups covering every divergence the runbook names, each with the rows the
  trading database believes, so a test or the demo can seed both sides.
"""

from recon_assets.simulator.server import SimulatorServer
from recon_assets.simulator.state import Fault, SimExchange

__all__ = ["Fault", "SimExchange", "SimulatorServer"]
