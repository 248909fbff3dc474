# The two commands of the README: `make demo` and `make test`. Both install what they need.
VENV := .venv
STAMP := $(VENV)/.bootstrapped

.PHONY: test test-fast demo bootstrap
$(STAMP): pyproject.toml scripts/bootstrap.sh
	bash scripts/bootstrap.sh
	touch $@

bootstrap: $(STAMP)

# The whole suite on two workers (this machine has 2 cores); a test file stays on one worker, so
# a module's expensive fixture (the demo, the browser) starts once.
test: $(STAMP)
	$(VENV)/bin/python -m pytest -n 2 --dist loadfile

# While working: the pure core and the SQL functions (tiers unit and db), with a fifth of the
# hypothesis examples, in well under a minute. CI runs `make test`.
test-fast: $(STAMP)
	RECON_TESTS_FAST=1 $(VENV)/bin/python -m pytest -m "unit or db" -q

demo: $(STAMP)
	$(VENV)/bin/recon demo
