"""`python -m composerlite.launch [torchrun options] -m composerlite run ...`: torchrun, except that a
launch stopped by SIGTERM or SIGINT exits 128 + the signal's number, as one `composerlite run` does.

torchrun forwards the signal to its workers (each saves the shared checkpoint and exits 143) but then
exits 1 itself, so a job scheduler cannot tell a preemption, which kept everything, from a failure.
"""

from __future__ import annotations

import sys

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.run import main as torchrun


def main(argv: list[str] | None = None) -> int:
    try:
        torchrun(argv)
    except SignalException as stopped:
        print(f"composerlite: launch stopped by {stopped.sigval.name}; the workers saved a checkpoint "
              "(see above). Relaunch with --autoresume to continue", file=sys.stderr)
        return 128 + int(stopped.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
