"""A run: its settings (`settings`, each declared once), its run directory (`run_directory`) and
checkpoints (`checkpoint`), the training loop (`loop`: the `Trainer`), and the library calls the
commands are made of: `train` (`composerlite run`), `evaluate` (`evaluate_run`, `composerlite
eval`), `throughput` (`measure_throughput`, `composerlite throughput`), `export` (`export_hf`,
`composerlite export`)."""
