"""A small fault soak in the suite: a few SIGKILLs at random moments, each followed by `--autoresume`,
on a local run directory and on an S3 store; the finished run must match one uninterrupted run
record for record, with nothing duplicated, lost or left half-written (`soak.check_same_as`).
`python tests/soak.py --kills 25` is the long one."""

from __future__ import annotations

import os
import time

import pytest

from soak import run_to_end, soak


def seed() -> int:
    """COMPOSERLITE_SOAK_SEED replays a failure's kill moments (the failure names its seed)."""
    return int(os.environ.get("COMPOSERLITE_SOAK_SEED") or time.time_ns() % 2**31)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run, local, for both soaks (the store does not change a record): (data, run dir, seconds)."""
    from conftest import SAMPLE_TEXT

    folder = tmp_path_factory.mktemp("soak")
    data = folder / "corpus.txt"
    data.write_text(SAMPLE_TEXT)
    run_dir = str(folder / "reference")
    return data, run_dir, run_to_end(data, run_dir, {**os.environ, "COMPOSERLITE_CACHE": str(folder / "cache")})


def test_kills_at_random_moments_lose_and_duplicate_nothing_locally(tmp_path, reference):
    data, reference_dir, full_run_s = reference
    soak(data, str(tmp_path / "killed"), reference_dir, full_run_s, kills=3, seed=seed(), env=dict(os.environ))


def test_kills_at_random_moments_lose_and_duplicate_nothing_on_s3(s3_bucket, reference):
    data, reference_dir, full_run_s = reference
    # s3_bucket has put the moto server's endpoint and credentials in os.environ.
    soak(data, f"{s3_bucket}/killed", reference_dir, full_run_s, kills=2, seed=seed(), env=dict(os.environ))
