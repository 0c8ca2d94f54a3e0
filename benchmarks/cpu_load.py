"""A changing CPU load, to check that benchmark verdicts survive a shared host: cycles through
phases of N busy processes (pure-Python spin loops), each phase lasting --seconds, until killed,
logging each phase's start. The calibration records in benchmarks/results/ name the phases used.

    python benchmarks/cpu_load.py --phases 0,2,4 --seconds 30 > load.log &
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import multiprocessing
import time


def spin() -> None:
    while True:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phases", default="0,2,4", help="busy processes in each phase, cycled (default 0,2,4)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each phase (default 30)")
    args = parser.parse_args()
    counts = [int(count) for count in args.phases.split(",")]
    busy: list[multiprocessing.Process] = []
    try:
        for count in itertools.cycle(counts):
            while len(busy) > count:
                busy.pop().terminate()
            while len(busy) < count:
                busy.append(multiprocessing.Process(target=spin, daemon=True))
                busy[-1].start()
            print(f"{datetime.datetime.now().isoformat(timespec='seconds')} {count} busy", flush=True)
            time.sleep(args.seconds)
    finally:
        for process in busy:
            process.terminate()


if __name__ == "__main__":
    main()
