"""Bad flag values, drawn by hypothesis (issue 18, "reliability proof"): any string for any
runbook flag through `ReconSettings.from_env`, and any JSON-like value through the launchpad
path (the resource's run config, as Dagster builds it). Every value is either a valid one
(parsed to the flag's type, within its bounds, never NaN or infinite) or refused with a
SettingsError naming the variable and what it expects; never another exception type, and the
message never carries a secret that sits in the same environment.
test_settings.py holds the hand-picked cases (one per kind of bad value); this file is the
property over arbitrary input."""

from __future__ import annotations

import math

import dagster as dg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recon_assets.settings import DEPLOYMENT_FLAGS, FLAGS, ReconSettings, SettingsError
from recon_assets_tests.harness.examples import examples

pytestmark = pytest.mark.unit

ALL_FLAGS = FLAGS + DEPLOYMENT_FLAGS
SECRETS = {"RECON_DATABASE_URL": "postgresql://recon:s3cr3t-pw-4242@db.example/postgres",
           "RECON_EXCHANGE_CREDENTIALS": '{"acct1": {"apiKey": "AK-SECRET-777", '
                                         '"secret": "SK-SECRET-888"}}',
           "SUPABASE_SERVICE_ROLE_KEY": "eyJSECRETSERVICEROLEKEY999"}
SECRET_TEXTS = ("s3cr3t-pw-4242", "AK-SECRET-777", "SK-SECRET-888", "eyJSECRETSERVICEROLEKEY999")

# Strings a person or a template might put in a variable: numbers in every spelling, words,
# whitespace, unicode digits, and arbitrary text.
env_text = st.one_of(
    st.sampled_from(["", " ", "nan", "NaN", "inf", "-inf", "Infinity", "1e309", "-0", "0",
                     "-1", "1.0", "2.5", "1e3", "0x10", "1_000", "True", "yes", "off", "٣",
                     "3 ", "\t5\n", "null", "None", "[]", "{}", "9" * 5000, "1" + "0" * 400]),
    st.integers(-10**20, 10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=20),
)
config_value = st.one_of(
    st.none(), st.booleans(), st.integers(-10**20, 10**20),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(),
                                                         max_size=2),
)


def _valid(flag, value) -> None:
    """A value the settings accepted: the flag's own type, finite, within its bounds."""
    assert type(value) is flag.kind, (flag.env, value)
    if flag.kind is float:
        assert math.isfinite(value), (flag.env, value)
    assert flag.valid(value), (flag.env, value)


def _refusal_names(flag, text: str) -> None:
    assert flag.env in text, text
    assert flag.expects in text, text
    for secret in SECRET_TEXTS:
        assert secret not in text


@settings(max_examples=examples(300), deadline=None)
@given(flag=st.sampled_from(ALL_FLAGS), raw=env_text)
def test_any_string_in_the_environment_is_parsed_or_refused_by_name(flag, raw):
    environ = {**SECRETS, flag.env: raw}
    try:
        parsed = ReconSettings.from_env(environ)
    except SettingsError as exc:  # (any other exception type fails the test)
        _refusal_names(flag, str(exc))
        return
    _valid(flag, getattr(parsed, flag.field))


@settings(max_examples=examples(150), deadline=None)
@given(values=st.dictionaries(st.sampled_from(ALL_FLAGS), env_text, min_size=2, max_size=4))
def test_every_bad_variable_is_named_and_no_good_one_is(values):
    environ = {**SECRETS, **{flag.env: raw for flag, raw in values.items()}}
    try:
        parsed = ReconSettings.from_env(environ)
    except SettingsError as exc:
        text = str(exc)
        for flag, raw in values.items():
            try:
                alone = ReconSettings.from_env({flag.env: raw})
            except SettingsError:
                _refusal_names(flag, text)
            else:  # a good value among bad ones is not reported as bad
                _valid(flag, getattr(alone, flag.field))
                assert f"{flag.env}=" not in text, text
        return
    for flag in values:
        _valid(flag, getattr(parsed, flag.field))


def _chain(exc: BaseException) -> str:
    """The text of an exception and of every exception behind it (Dagster wraps the resource's
    own error in DagsterResourceFunctionError)."""
    parts, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        parts.append(str(exc))
        exc = getattr(exc, "user_exception", None) or exc.__cause__ or exc.__context__
    return "\n".join(parts)


@settings(max_examples=examples(120), deadline=None)
@given(flag=st.sampled_from(ALL_FLAGS), value=config_value)
def test_any_launchpad_value_is_taken_or_refused_by_name(flag, value):
    """The launchpad path: Dagster checks the config's type (an error naming the field's path),
    then the resource's own checks run (a SettingsError naming the variable, which Dagster
    shows wrapped); a value either passes both and is valid, or is refused."""
    config = {"settings": {"config": {flag.field: value}}}
    try:
        with dg.build_resources({"settings": ReconSettings.configure_at_launch()},
                                resource_config=config) as resources:
            parsed = resources.settings
    except dg.DagsterInvalidConfigError as exc:  # the type, checked by Dagster's config schema
        assert flag.field in str(exc), str(exc)
        return
    except (dg.DagsterResourceFunctionError, ValueError) as exc:
        text = _chain(exc)
        assert "invalid reconciliation settings" in text, text
        _refusal_names(flag, text)
        return
    _valid(flag, getattr(parsed, flag.field))


NUMERIC_FLAGS = [f for f in ALL_FLAGS if f.kind is not bool]


@pytest.mark.parametrize("flag", NUMERIC_FLAGS, ids=[f.env for f in NUMERIC_FLAGS])
def test_a_direct_construction_refuses_nan_and_infinity(flag):
    """The Python path (ReconSettings(...) in code and tests): NaN and infinities are refused
    for every numeric flag, whatever the bounds."""
    for value in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError) as err:
            ReconSettings(**{flag.field: value})
        _refusal_names(flag, str(err.value))
