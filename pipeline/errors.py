"""The one exception type that means "the user asked for something we cannot do"."""


class UserError(Exception):
    """A mistake in the user's input. The CLI prints it as one line and exits with code 2."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none): library errors
    can run to many lines, and a UserError is one line."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
