"""Option validation: one-line messages that name the option as users type it."""

import pytest

from repvgg_lab.errors import InputError, QuantizationError
from repvgg_lab.quant import QuantOptions, check_precision


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"method": "x"},
            "quantize.method must be one of minmax, percentile, entropy, got 'x'",
        ),
        (
            {"calibration_batches": 0},
            "quantize.calibration_batches must be an integer >= 1, got 0",
        ),
        (
            {"calibration_batches": 2.5},
            "quantize.calibration_batches must be an integer >= 1, got 2.5",
        ),
        ({"per_channel": 1}, "quantize.per_channel must be true or false, got 1"),
        ({"equalize": "yes"}, "quantize.equalize must be true or false, got 'yes'"),
        ({"precision": "int4"}, "quantize.precision must be int8, got 'int4'"),
        ({"percentile": 100}, "quantize.percentile must be a number in [90, 100), got 100"),
    ],
)
def test_bad_options_are_refused_in_one_line(kwargs: dict, message: str) -> None:
    with pytest.raises(QuantizationError) as err:
        QuantOptions(**kwargs)
    assert str(err.value) == message
    assert "\n" not in str(err.value)
    assert isinstance(err.value, InputError)


def test_defaults_are_per_channel_minmax_int8() -> None:
    options = QuantOptions()
    assert (options.method, options.per_channel, options.equalize) == ("minmax", True, False)
    assert options.precision == "int8"
    with pytest.raises(AttributeError):
        options.method = "entropy"  # type: ignore[misc]


@pytest.mark.parametrize(("value", "expected"), [("int8", "int8"), ("none", None), (None, None)])
def test_precision_choices(value: str | None, expected: str | None) -> None:
    assert check_precision(value) == expected


@pytest.mark.parametrize("value", ["int4", "fp8"])
def test_unsupported_precision_is_named(value: str) -> None:
    with pytest.raises(QuantizationError) as err:
        check_precision(value)
    assert str(err.value) == f"quantize={value} is not supported; use none or int8"


def test_options_from_a_config_mapping() -> None:
    options = QuantOptions.from_mapping({"method": "entropy", "per_channel": False})
    assert (options.method, options.per_channel) == ("entropy", False)
    with pytest.raises(QuantizationError) as err:
        QuantOptions.from_mapping({"methods": "minmax"})
    assert str(err.value).startswith("unknown option quantize.methods; known: method, ")
