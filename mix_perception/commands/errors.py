"""CommandError: bad input to a `mix-perception` command, raised by the commands, caught by cli.main."""


class CommandError(Exception):
    """Bad input to a command: printed as one line, exit status 2."""
