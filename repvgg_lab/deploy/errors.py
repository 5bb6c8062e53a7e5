"""The deploy step's user-facing failure (bad checkpoint, unknown model, drift over tolerance)."""

from repvgg_lab.errors import InputError


class DeployError(InputError):
    """A deploy that cannot go ahead; the message names the problem and nothing was written."""
