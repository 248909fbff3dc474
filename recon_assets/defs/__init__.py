"""One folder per domain; each exposes `defs()` returning its Definitions."""
