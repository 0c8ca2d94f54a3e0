"""What a run runs on: the device, precision and CPU threads (`runtime`), torchrun's processes and
DDP/FSDP2 (`distributed`), SIGTERM and SIGINT as a request to stop (`signals`), and local or fsspec
paths with atomic writes and retries (`storage`). Nothing here imports the rest of composerlite."""
