"""One-line error text, for log lines and command-line exits."""


def first_line(error: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type name when the message is empty."""
    lines = str(error).strip().splitlines()
    return lines[0].strip() if lines else type(error).__name__
