"""composerlite: a small, fast, honest trainer for GPT-2-family language models."""

from composerlite.algorithm import Algorithm, Callback, Order
from composerlite.event import Event
from composerlite.loggers import Logger
from composerlite.state import State
from composerlite.time import Time, TimeUnit, Timestamp

__all__ = ["Algorithm", "Callback", "Event", "Logger", "Order", "State", "Time", "TimeUnit", "Timestamp"]
