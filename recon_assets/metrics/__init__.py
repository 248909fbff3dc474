"""The runbook's metrics: `/internal/health` and `/metrics`, served by `recon health`."""
