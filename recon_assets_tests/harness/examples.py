"""How many examples a hypothesis property tries: the full count in `make test` (CI), a fifth in
`make test-fast` (which sets RECON_TESTS_FAST=1), so the working loop stays short."""

import os


def examples(full: int) -> int:
    return max(10, full // 5) if os.environ.get("RECON_TESTS_FAST") == "1" else full
