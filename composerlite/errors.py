"""The core's errors. None of them knows about a command line or exit codes: messages name
configuration options in backquotes, as `key` or `key=value` (the names `RunConfig` and
`composerlite.train` take, e.g. `max_duration`), and a front end shows them its own way (the CLI
as `--max-duration`, see `composerlite.commands.flags.as_flags`)."""


class ConfigError(ValueError):
    """A configuration that cannot run: an unknown model, algorithm or option, a bad value, an
    impossible combination, a run directory that holds another run, a checkpoint that does not
    fit. Raised before anything is written. The message is one line meant for the user."""



class RunHalted(RuntimeError):
    """Training stopped on purpose (a signal, the NaN policy, a failed save). The message says what
    was kept and how to continue; `exit_code` is the status a process that ran the run should end
    with (128 + the signal's number for a signal, 1 otherwise)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class Diverged(RunHalted):
    """The loss stopped being finite and the NaN policy stopped the run: an outcome of the run's
    settings (too high an LR, say), not a fault of the machine or the code, so a run at the same
    settings would diverge again. A bench records it as that tuning point's result."""

    def __init__(self, message: str, *, loss: float, step: int):
        super().__init__(message, exit_code=1)
        self.loss, self.step = loss, step


class PluginError(RuntimeError):
    """A plugin's own code raised (a bug in that plugin, not in the configuration): an algorithm
    while it was being built or converting the model at INIT, a logger destination in any of its
    methods or event handlers. The message names the plugin; its exception is the `__cause__`."""
