"""Which run configs a run may not start with (issue 38, "run config cannot reach a secret or
loosen a gate"). Pure: `resources.guard` applies it when a run sets up a deployment-bound resource.

The Launchpad and any run request are untrusted input. Two things in a run's config are refused:

- **a resource override** (`resources.<name>...`): every resource (the exchange, the database, the
  settings, the alert webhook, the IO manager) is bound by the deployment; a run that rebinds one
  could send the exchange key to another host, or turn the dry run off and the gates down;
- **an environment source** anywhere (`{"env": "NAME"}`, which Dagster resolves for every `str`,
  `int`, `float` and `bool` config field with the code server's environment): an operator's
  reason or note would carry a secret into the run's events and the append-only tables.

A violation names the config path, never a value (the path is the run's own text; the value may
be the secret).
"""

from __future__ import annotations

from collections.abc import Mapping


class RunConfigRefused(ValueError):
    """A run's config overrides a deployment-bound resource or reads the environment."""


def _env_sources(value: object, path: str) -> list[str]:
    if isinstance(value, Mapping):
        if set(value) == {"env"}:
            return [path]
        return [p for key, inner in value.items()
                for p in _env_sources(inner, f"{path}.{key}" if path else str(key))]
    if isinstance(value, (list, tuple)):
        return [p for i, inner in enumerate(value) for p in _env_sources(inner, f"{path}[{i}]")]
    return []


def run_config_violations(run_config: Mapping | None) -> list[str]:
    """The config paths a run may not set, in a stable order (empty: the config is acceptable)."""
    if not run_config:
        return []
    found = [f"resources.{name}" for name in sorted(run_config.get("resources") or {})]
    found += [path for path in _env_sources(run_config, "")
              if not any(path == f or path.startswith(f + ".") for f in found)]
    return found


def refuse_unsafe_run_config(run_config: Mapping | None, job_name: str | None = None) -> None:
    """Raise `RunConfigRefused` naming every violation (see the module docstring)."""
    found = run_config_violations(run_config)
    if found:
        where = f"run of {job_name}" if job_name else "run"
        raise RunConfigRefused(
            f"this {where} is refused before it reads or sends anything: its config sets "
            + ", ".join(found) + ". Resources are bound by the deployment (change them there, "
            "not per run), and no config field may read the environment ({env: ...}): give "
            "operator text as plain text")
