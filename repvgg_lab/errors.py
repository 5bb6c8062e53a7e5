"""The one family of user-input errors: each is reported in one line (no traceback), exit 2.

Every class says which part of the input was wrong; all derive from `InputError`, so callers
that only need "bad input" catch that one."""


class InputError(ValueError):
    """Bad input (a file, a name, an option); the message says what was expected."""


class ConfigError(InputError):
    """A config or command-line option that makes no sense (before any work is done)."""


class DataRootError(InputError):
    """`data.root` does not hold the files a datamodule expects; the message names them."""


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
