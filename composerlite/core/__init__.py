"""The core: what a plugin sees and what calls it. The events in the order the loop fires them
(`event`), the `State` they act on, `Algorithm` and `Callback`, the `Logger` they log through and
the interface of the destinations it writes to (`logger`), the `Engine` that runs them at each
event, training time (`time`) and LR schedules in its units (`schedule`), which algorithms may run
together and in what order (`composition`), and the tools model surgery and attention methods use
(`surgery`, `attention`). It imports nothing of composerlite but `composerlite.system` and
`composerlite.errors`; the loop that fires the events is `composerlite.run.loop`."""
