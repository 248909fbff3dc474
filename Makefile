# The two commands of the README: `make demo` and `make test`. Both install what they need.
VENV := .venv
STAMP := $(VENV)/.bootstrapped

.PHONY: test test-fast demo bootstrap mutants lock
$(STAMP): pyproject.toml requirements-test.txt scripts/bootstrap.sh
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

# Mutation testing of the decisions (core/parity, watchdog, backfill, corrections) against the
# unit tier, with mutmut ([tool.mutmut] in pyproject.toml); not in CI. One module at a time:
# `make mutants MODULE=parity` (about 15 minutes on two cores; watchdog about 35); with no
# MODULE, all four (hours). MUTANTS="recon_assets.core.parity.x_slice_decision*" picks any set;
# `.venv/bin/mutmut results` lists the survivors, `.venv/bin/mutmut show NAME` one.
MODULE ?=
MUTANTS ?= $(if $(MODULE),recon_assets.core.$(MODULE)*,)
mutants: $(STAMP)
	$(VENV)/bin/pip install -q --disable-pip-version-check -e ".[mutation]"
	rm -rf mutants
	RECON_TESTS_FAST=1 $(VENV)/bin/mutmut run --max-children 2 $(MUTANTS)
	$(VENV)/bin/mutmut results

# The lockfiles (pinned versions with their hashes): requirements.txt for the image,
# requirements-test.txt for bootstrap and CI. Run after changing pyproject.toml's dependencies;
# pins already in the files are kept unless UPGRADE=--upgrade (then everything moves to the
# newest versions the ranges allow; run `make test` on them before committing).
UPGRADE ?=
LOCK = CUSTOM_COMPILE_COMMAND="make lock" $(VENV)/bin/pip-compile -q --generate-hashes \
	--no-strip-extras --no-emit-index-url --no-emit-find-links $(UPGRADE)
lock: $(STAMP)
	$(VENV)/bin/pip install -q --disable-pip-version-check "pip-tools>=7.4"
	$(LOCK) -o requirements.txt pyproject.toml
	$(LOCK) --extra test -o requirements-test.txt pyproject.toml
