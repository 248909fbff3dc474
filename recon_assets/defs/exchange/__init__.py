"""Exchange truth: open orders, positions and fills of each exchange account, through ccxt."""
