"""composerlite: a small, fast, honest trainer for GPT-2-family language models.

The library: `train(config) -> RunResult` (what `composerlite run` does), `evaluate_run`,
`measure_throughput`, `export_hf`; the plugin API: `Algorithm`, `Callback`, `Event`, `State`, ...
"""

from composerlite.core.algorithm import Algorithm, ModelConverter, Order
from composerlite.core.callback import Callback
from composerlite.core.event import Event
from composerlite.core.time import Time, TimeUnit, Timestamp
from composerlite.lazy import lazy_attributes

# Imported on first use: a plugin's `from composerlite import Algorithm` should not pay for the
# whole training stack, nor the command line for torch (`State`) before it has checked its flags.
_LAZY = {
    "Logger": "composerlite.core.logger",
    "State": "composerlite.core.state",
    "train": "composerlite.run.train",
    "RunResult": "composerlite.run.train",
    "RunConfig": "composerlite.run.settings",
    "ConfigError": "composerlite.errors",
    "evaluate_run": "composerlite.run.evaluate",
    "measure_throughput": "composerlite.run.throughput",
    "export_hf": "composerlite.run.export",
}
__getattr__ = lazy_attributes(__name__, _LAZY)

__all__ = ["Algorithm", "Callback", "ConfigError", "Event", "Logger", "ModelConverter", "Order", "RunConfig", "RunResult", "State",
           "Time", "TimeUnit", "Timestamp", "evaluate_run", "export_hf", "measure_throughput", "train"]
