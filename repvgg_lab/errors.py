"""The one family of user-input errors: each is reported in one line (no traceback), exit 2.

Every class says which part of the input was wrong; all derive from `InputError`, so callers
that only need "bad input" catch that one."""


class InputError(ValueError):
    """Bad input (a file, a name, an option); the message says what was expected."""


class ConfigError(InputError):
    """A config or command-line option that makes no sense (before any work is done)."""


class DataRootError(InputError):
    """`data.root` does not hold the files a datamodule expects; the message names them."""


class ImageTreeError(InputError):
    """An image folder tree to copy that cannot be read, or a destination that would overlap it."""


class CheckpointError(InputError):
    """A checkpoint that cannot be read, or does not fit the model it is loaded into."""


class UnknownModelError(InputError):
    """A model name that is not in the registry."""


class PruningError(InputError):
    """A model or an option that pruning cannot handle; the message says why."""


class DeployError(InputError):
    """A deploy that cannot go ahead; the message names the problem and nothing was written."""


class ConversionError(InputError):
    """A model whose structure an exact conversion does not cover; the message says where."""


class QuantizationError(InputError):
    """An int8 option or model that quantization cannot handle; the message says why."""


# Option checks shared by the option objects (PruneOptions, DeployOptions): each raises `error`
# with a one-line message that names the option as the user types it.


def is_integer(value: object) -> bool:
    """True for a real int (bool is an int subclass, but `True` is no count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_integer(error: type[InputError], name: str, value: object, low: int) -> int:
    """`value` if it is an integer >= `low`; else `error` naming `name`."""
    if not is_integer(value) or value < low:  # type: ignore[operator]
        raise error(f"{name} must be an integer >= {low}, got {value!r}")
    return value  # type: ignore[return-value]


def check_number(error: type[InputError], name: str, value: object) -> float:
    """`value` as a float if it is a real, non-NaN number; else `error` naming `name`."""
    if not isinstance(value, int | float) or isinstance(value, bool) or value != value:
        raise error(f"{name} must be a number, got {value!r}")
    return float(value)


def check_choice(error: type[InputError], name: str, value: object, allowed: tuple) -> None:
    """Refuse a `value` that is not one of `allowed`."""
    if value not in allowed:
        choices = ", ".join(str(a) for a in allowed)
        raise error(f"{name} must be one of {choices}, got {value!r}")
