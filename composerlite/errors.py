"""User mistakes: the CLI prints these as one line and exits with code 2 (never a traceback)."""


class UsageError(ValueError):
    pass
