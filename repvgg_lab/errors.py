"""The base class of errors caused by bad user input (reported in one line, no traceback)."""


class InputError(ValueError):
    """Bad input (a file, a name, an option); the message says what was expected."""
