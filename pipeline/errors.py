"""The one exception type that means "the user asked for something we cannot do"."""


class UserError(Exception):
    """A mistake in the user's input. The CLI prints it as one line and exits with code 2."""
