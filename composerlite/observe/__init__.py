"""What watches a run without changing it: the built-in logger destinations (`loggers`: the
console's progress bar, metrics.jsonl, records in memory), the experiment trackers (`trackers`:
TensorBoard, MLflow, W&B) and the speed monitor (`speed_monitor`: tokens/s, MFU, peak memory)."""
