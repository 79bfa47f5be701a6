"""Errors a user can fix. Each renders as one line that names what is wrong and how to fix it."""


class BenchError(Exception):
    """A user-facing error: the CLI prints `str(err)` on one line and exits with code 2."""


class GridError(BenchError):
    """A grid file is malformed or names something that does not exist.

    The message reads `FILE: FIELD.PATH: what is wrong`, e.g.
    `grid.toml: patterns[1].sparsity: 1.3 is not in [0, 1)`.
    """

    def __init__(self, source: str, field: str, message: str):
        self.source, self.field, self.message = source, field, message
        where = f"{source}: {field}: " if field else f"{source}: "
        super().__init__(where + message)


def did_you_mean(name: str, known) -> str:
    """' (did you mean 'x'?)' for the closest known name, or '' when nothing is close."""
    import difflib

    close = difflib.get_close_matches(str(name), sorted(known), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


class Interrupted(Exception):
    """`bench submit` got SIGINT or SIGTERM: outstanding stages were cancelled and recorded as such."""

    def __init__(self, signum: int, started: bool = True):
        import signal

        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.started = started  # False: received during start-up, before any stage was dispatched
