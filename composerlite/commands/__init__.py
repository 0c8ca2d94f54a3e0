"""Subcommands of the `composerlite` CLI: each module has `add_arguments(parser)` and `main(args)`."""
