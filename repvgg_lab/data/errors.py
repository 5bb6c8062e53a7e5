"""The one error a datamodule raises for a missing or malformed dataset folder."""


class DataRootError(ValueError):
    """`data.root` does not hold the files a datamodule expects; the message names them."""
