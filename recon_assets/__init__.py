"""recon-assets: the reconciliation control plane that keeps a trading system's database honest
against exchange truth, as a Dagster code location."""
