"""Property-based tests of the validation layer (issue 18): whatever reports, patients, seeds,
sampling options or CSV bytes it is given, it accepts them (and what it returns is valid) or
refuses them with a `DiffusetsError` (a `ValueError`) whose message is one short line. No other
exception type, no traceback from deep inside. No model runs: fast."""

import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from diffusets_jax.batch_generation import _parse_row, read_conditions
from diffusets_jax.diffusion import SAMPLERS
from diffusets_jax.errors import DiffusetsError
from diffusets_jax.pipeline import (
    AGE_RANGE,
    HEART_RATE_RANGE,
    MAX_REPORT_CHARS,
    MAX_SAMPLES,
    MAX_SEED,
    Pipeline,
    Sampling,
    check_seed,
    validate_conditions,
)

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MAX_STEPS = 1000

text = st.text(st.characters(codec=None), max_size=40)  # any code point, surrogates included
reports = st.one_of(
    text,
    st.just(""),
    st.lists(
        st.sampled_from(
            ["Sinus rhythm", "|", "\n", "\r\n", " ", "Atrial fibrillation", "é", "😀", "\udce9", "\x00", "\u2028"]
        ),
        max_size=12,
    ).map("".join),
    st.builds(lambda part, n: part * n, st.text(min_size=1, max_size=4), st.integers(1, 2 * MAX_REPORT_CHARS)),
    st.lists(text, max_size=5),
    st.one_of(st.none(), st.integers(), st.floats(), st.binary(max_size=10), st.lists(st.integers(), max_size=3)),
)
numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(10**30), 10**30),
    st.booleans(),
    st.sampled_from([np.float32(50), np.float64(np.nan), np.int64(70), np.float16(np.inf), 1e308 * 10]),
    st.none(),
    text,
)
sexes = st.one_of(
    st.sampled_from(["M", "F", "m", " f ", "male", "FEMALE", "x", "", "Mx"]),
    text,
    st.none(),
    st.integers(),
    st.floats(),
)
counts = st.one_of(
    st.integers(-(2**70), 2**70),
    st.booleans(),
    st.floats(),
    st.none(),
    text,
    st.sampled_from([np.int32(4), np.int64(-1), np.uint64(2**63)]),
)
seeds = st.one_of(
    st.integers(-(2**70), 2**70),
    st.integers(0, MAX_SEED),
    st.booleans(),
    st.floats(),
    st.none(),
    text,
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from([np.uint32(7), np.int64(-3)]),
)


def assert_clean_refusal(error: BaseException) -> None:
    """A typed error (also a ValueError) with a message of one short line."""
    assert isinstance(error, DiffusetsError) and isinstance(error, ValueError), repr(error)
    message = str(error)
    assert message and "\n" not in message and "\r" not in message and len(message) < 400, message


def run(function, *args, **kwargs):
    """`function(*args)`, or None after checking that it refused cleanly (any other exception fails)."""
    try:
        return function(*args, **kwargs)
    except DiffusetsError as error:
        assert_clean_refusal(error)
        return None


@SETTINGS
@given(report=reports, age=numbers, sex=sexes, heart_rate=numbers, num_samples=counts)
def test_validate_conditions_accepts_valid_values_or_refuses_in_one_line(report, age, sex, heart_rate, num_samples):
    result = run(validate_conditions, report, age, sex, heart_rate, num_samples)
    if result is None:
        return
    statements, sex_code = result
    assert statements and all(s == s.strip() and s for s in statements)
    if isinstance(report, str):
        assert all("|" not in s and len(s.splitlines()) == 1 for s in statements)
    assert not any("\ud800" <= c <= "\udfff" for s in statements for c in s)
    assert sex_code in ("M", "F")
    for value, (low, high) in ((age, AGE_RANGE), (heart_rate, HEART_RATE_RANGE)):
        assert not isinstance(value, bool) and math.isfinite(value) and low <= value <= high
    assert 1 <= num_samples <= MAX_SAMPLES and not isinstance(num_samples, bool)


@SETTINGS
@given(seed=seeds)
def test_check_seed_accepts_exactly_the_integers_of_0_to_2_32_minus_1(seed):
    value = run(check_seed, seed, "--seed")
    as_int = None
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        as_int = int(seed)
    elif isinstance(seed, str):
        try:
            as_int = int(seed.strip())
        except ValueError:
            pass
    if as_int is not None and 0 <= as_int <= MAX_SEED:
        assert value == as_int and type(value) is int
    else:
        assert value is None


@pytest.fixture(scope="module")
def config_only_pipeline():
    """A `Pipeline` with only the tiny config (no models, no text embedder): enough for `sampling`."""
    from conftest import tiny_config

    pipeline = Pipeline.__new__(Pipeline)
    pipeline.config = tiny_config()
    return pipeline


options = st.one_of(
    st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(-(10**6), 10**6), st.booleans(), text
)


@SETTINGS
@given(
    sampler=st.one_of(
        st.sampled_from([*SAMPLERS, "DDPM", ""]), text, st.none(), st.integers(), st.lists(st.integers(), max_size=2)
    ),
    num_steps=counts,
    eta=options,
    guidance_scale=options,
    exact_limb_leads=st.one_of(st.booleans(), st.none(), st.integers(0, 1)),
)
def test_sampling_options_are_accepted_valid_or_refused_in_one_line(
    config_only_pipeline, sampler, num_steps, eta, guidance_scale, exact_limb_leads
):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # guidance on a model trained without condition dropout
        result = run(config_only_pipeline.sampling, sampler, num_steps, eta, guidance_scale, exact_limb_leads)
    if result is None:
        return
    assert result.sampler in SAMPLERS
    assert type(result.num_steps) is int and 1 <= result.num_steps <= MAX_STEPS
    assert type(result.eta) is float and 0 <= result.eta <= 1
    assert type(result.guidance_scale) is float and 0 <= result.guidance_scale <= 50
    assert isinstance(result.exact_limb_leads, bool)


@SETTINGS
@given(
    sampler=st.one_of(st.sampled_from(SAMPLERS), text, st.none(), st.integers()),
    num_steps=counts,
    eta=options,
    guidance_scale=options,
    exact_limb_leads=st.one_of(st.booleans(), st.none(), st.integers(0, 1)),
)
def test_a_sampling_made_directly_is_valid_or_refused_in_one_line(
    sampler, num_steps, eta, guidance_scale, exact_limb_leads
):
    result = run(Sampling, sampler, num_steps, eta, guidance_scale, exact_limb_leads)
    if result is None:
        return
    assert result.sampler in SAMPLERS and type(result.num_steps) is int and result.num_steps >= 1
    assert type(result.eta) is float and 0 <= result.eta <= 1
    assert type(result.guidance_scale) is float and 0 <= result.guidance_scale <= 50
    assert type(result.exact_limb_leads) is bool
    assert result == Sampling(**result.as_dict()) and hash(result) == hash(Sampling(**result.as_dict()))


cells = st.one_of(text, st.sampled_from(["50", "70", "M", "F", "nan", "inf", "-1", "1e3", "4294967296", " 7 ", ""]))


@SETTINGS
@given(
    values=st.fixed_dictionaries(
        {
            "report": st.one_of(text, reports.filter(lambda r: isinstance(r, str))),
            "age": cells,
            "sex": cells,
            "hr": cells,
        },
        optional={"seed": cells},
    ),
    base_seed=st.integers(0, MAX_SEED),
)
@example(values={"report": "\ud800", "age": "", "sex": "", "hr": ""}, base_seed=0)  # a lone high surrogate
@example(values={"report": "Sinus rhythm\udce9", "age": "50", "sex": "M", "hr": "70"}, base_seed=0)
def test_a_csv_row_is_parsed_valid_or_listed_with_a_one_line_error(values, base_seed):
    values = {k: v.strip() for k, v in values.items()}
    row = _parse_row(3, values, base_seed)
    if row.error:
        assert "\n" not in row.error and "\r" not in row.error and len(row.error) < 400, row.error
        return
    assert row.sex in ("M", "F") and AGE_RANGE[0] <= row.age <= AGE_RANGE[1]
    assert HEART_RATE_RANGE[0] <= row.hr <= HEART_RATE_RANGE[1]
    assert row.seed is None or 0 <= row.seed <= MAX_SEED
    assert row.report and all(s.strip() == s and s for s in row.report.split("|"))


header = st.sampled_from(
    [
        b"report,age,sex,hr\n",
        b"\xef\xbb\xbfreport,age,sex,hr\r\n",
        b"Report, Age ,SEX,hr,seed\n",
        b"age,sex,hr\n",
        b"",
        b"report;age;sex;hr\n",
    ]
)
body = st.one_of(
    st.binary(max_size=300),
    st.lists(st.tuples(cells, cells, cells, cells).map(lambda r: ",".join(r)), max_size=5).map(
        lambda rows: "\n".join(rows).encode("utf-8", "surrogatepass")
    ),  # lone surrogates: invalid UTF-8
    st.text(max_size=200).map(lambda t: t.encode("latin-1", "replace")),
)


@SETTINGS
@given(head=header, data=body)
def test_a_csv_of_any_bytes_is_read_row_by_row_or_refused_naming_the_file(head, data):
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "conditions.csv"
        path.write_bytes(head + data)
        try:
            rows = read_conditions(path)
        except DiffusetsError as error:
            assert_clean_refusal(error)
            assert str(path) in str(error)
            return
    assert rows and [r.row for r in rows] == list(range(len(rows)))
    for row in rows:
        assert ("\n" not in row.error and len(row.error) < 400) if row.error else row.sex in ("M", "F")
