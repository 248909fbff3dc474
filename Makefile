# The two commands of the README: `make demo` and `make test`. Both install what they need.
VENV := .venv
STAMP := $(VENV)/.bootstrapped

.PHONY: test demo bootstrap
$(STAMP): pyproject.toml scripts/bootstrap.sh
	bash scripts/bootstrap.sh
	touch $@

bootstrap: $(STAMP)

test: $(STAMP)
	$(VENV)/bin/python -m pytest

demo: $(STAMP)
	$(VENV)/bin/recon demo
