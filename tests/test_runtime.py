"""The CPU runtime a run gets: its threads pinned, freed memory kept for reuse (glibc), and oneMKL's
VML kernels chosen before any multi-threaded call."""

from __future__ import annotations

import re
import resource
from pathlib import Path

import pytest
import torch

from composerlite.system.runtime import VML_FUNCTIONS, _glibc, kept_freed_memory, pinned_runtime

PAGES = 16384  # a 64 MiB buffer of floats: past glibc's largest mmap threshold (32 MiB), like a step's logits


def faults_per_step() -> float:
    """Minor page faults per step of a step-like pattern (three large buffers allocated, used and
    freed), after five steps to settle: the default allocator maps each buffer afresh and faults
    every page in; a kept heap reuses the pages of the step before."""

    def step() -> float:
        ones = torch.ones(PAGES * 1024)
        return float((ones * 2 + ones)[0])

    for _ in range(5):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        step()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10


@pytest.mark.skipif(_glibc() is None, reason="the setting is glibc's")
def test_a_cpu_run_reuses_freed_memory_instead_of_faulting_it_in_every_step():
    with pinned_runtime(torch.get_num_threads(), torch.device("cpu")):
        assert faults_per_step() < PAGES / 2  # the default: 3 buffers, 3 x PAGES
        with kept_freed_memory():  # nested, as evaluation inside training: the inner exit keeps it
            pass
        assert faults_per_step() < PAGES / 2


def test_threads_are_pinned_inside_and_restored_after():
    before = torch.get_num_threads()
    with pinned_runtime(1, torch.device("cpu")):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


VML_HEADER = Path(torch.__file__).parent / "include" / "ATen" / "cpu" / "vml.h"


@pytest.mark.skipif(not VML_HEADER.exists(), reason="this torch build ships no ATen headers")
def test_the_vml_warm_up_covers_every_function_aten_hands_to_mkl():
    """The installed torch's own list: a function added to it, or dropped, fails here until
    `VML_FUNCTIONS` follows."""
    handed = re.findall(r"^IMPLEMENT_VML_MKL\((\w+),", VML_HEADER.read_text(), flags=re.MULTILINE)
    assert handed, "the header no longer names its MKL functions this way"
    assert sorted(VML_FUNCTIONS) == sorted(handed)
