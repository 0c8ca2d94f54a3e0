"""User mistakes: the CLI prints these as one line and exits with code 2 (never a traceback)."""


class UsageError(ValueError):
    pass


class RunHalted(RuntimeError):
    """Training stopped on purpose (a signal, the NaN policy, a failed save). The CLI prints the
    message, which says what was kept and how to continue, and exits with `exit_code`."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class PluginError(RuntimeError):
    """An algorithm's own code raised while it was being built or converting the model at INIT (a
    bug in that plugin, not in the command line). The CLI prints the message, which names the
    algorithm, as one line and exits with code 1; `--debug` adds the plugin's traceback."""
