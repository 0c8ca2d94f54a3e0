"""composerlite: a small, fast, honest trainer for GPT-2-family language models.

The library: `train(config) -> RunResult` (what `composerlite run` does), `evaluate_run`,
`measure_throughput`, `export_hf`; the plugin API: `Algorithm`, `Callback`, `Event`, `State`, ...
"""

from composerlite.algorithm import Algorithm, ModelConverter, Order
from composerlite.callback import Callback
from composerlite.event import Event
from composerlite.lazy import lazy_attributes
from composerlite.time import Time, TimeUnit, Timestamp

# Imported on first use: a plugin's `from composerlite import Algorithm` should not pay for the
# whole training stack, nor the command line for torch (`State`) before it has checked its flags.
_LAZY = {
    "Logger": "composerlite.loggers",
    "State": "composerlite.state",
    "train": "composerlite.training",
    "RunResult": "composerlite.training",
    "RunConfig": "composerlite.config",
    "ConfigError": "composerlite.errors",
    "evaluate_run": "composerlite.evaluation",
    "measure_throughput": "composerlite.throughput",
    "export_hf": "composerlite.export",
}
__getattr__ = lazy_attributes(__name__, _LAZY)

__all__ = ["Algorithm", "Callback", "ConfigError", "Event", "Logger", "ModelConverter", "Order", "RunConfig", "RunResult", "State",
           "Time", "TimeUnit", "Timestamp", "evaluate_run", "export_hf", "measure_throughput", "train"]
