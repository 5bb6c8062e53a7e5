"""Shared by the entry points: one-line errors instead of tracebacks for bad user input."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

from hydra.errors import InstantiationException

from repvgg_lab.errors import InputError

log = logging.getLogger(__name__)


# Errors that mean "the input is wrong", not "the program is wrong"; anything else keeps its
# traceback because it is a bug worth reporting.
USER_ERRORS: tuple[type[BaseException], ...] = (InputError, FileNotFoundError)


def _root_cause(err: BaseException) -> BaseException:
    while isinstance(err, InstantiationException) and err.__cause__ is not None:
        err = err.__cause__
    return err


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn known bad-input exceptions into `error: <message>` on stderr and exit status 2."""
    try:
        yield
    except InstantiationException as err:
        cause = _root_cause(err)
        if isinstance(cause, USER_ERRORS):
            _fail(cause)
        raise
    except USER_ERRORS as err:
        _fail(err)


def _fail(err: BaseException) -> None:
    message = " ".join(str(err).split()) or type(err).__name__
    log.debug("user error", exc_info=err)
    print(f"error: {message}", file=sys.stderr)  # noqa: T201 - the CLI's one-line report
    sys.exit(2)
