"""The one error a datamodule raises for a missing or malformed dataset folder."""

from repvgg_lab.errors import InputError


class DataRootError(InputError):
    """`data.root` does not hold the files a datamodule expects; the message names them."""
