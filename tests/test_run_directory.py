"""The run directory's layout rules that no training run in the other tests reaches: checkpoints
listed by step past eight digits, a record torn by a crash dropped on resume, and two plugin files
of the same name kept apart."""

from __future__ import annotations

import json

from composerlite.run.run_directory import (checkpoint_folder, config_record, find_checkpoints, prepare_run_dir,
                                        run_algorithm_specs, run_dir_of, truncate_metrics)
from composerlite.run.settings import validated
from composerlite.system.storage import location


def test_checkpoints_are_listed_by_step_not_by_name(tmp_path):
    run_dir = location(str(tmp_path))
    for step in (100_000_000, 2, 99_999_999):
        checkpoint_folder(run_dir, step).makedirs()
    run_dir.child("checkpoints", "notes").makedirs()  # not a checkpoint: ignored
    found = find_checkpoints(run_dir)
    assert [folder.name for folder in found] == ["ba00000002", "ba99999999", "ba100000000"]
    assert run_dir_of(found[0]).same_place(run_dir)


def test_resuming_keeps_the_records_up_to_the_checkpoint_and_drops_a_torn_one(tmp_path):
    metrics = location(str(tmp_path / "metrics.jsonl"))
    records = [{"event": "train", "step": step} for step in (1, 2, 3)]
    metrics.write_bytes(("".join(json.dumps(record) + "\n" for record in records) + '{"event": "tr').encode())
    assert truncate_metrics(metrics, 2) == records[:2]
    assert metrics.read_bytes().decode().splitlines() == [json.dumps(record) for record in records[:2]]


def test_two_plugin_files_of_the_same_name_get_their_own_copies(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "plugin.py").write_text(f"# {folder}\n")
    config = validated({"algorithms": [f"{tmp_path}/a/plugin.py:One", {f"{tmp_path}/b/plugin.py:Two": {"k": 1}}]})
    run_dir = location(str(tmp_path / "run"))
    record = config_record(config, world_size=1)
    assert record["algorithms"] == [{"plugins/plugin.py:One": {}}, {"plugins/plugin-2.py:Two": {"k": 1}}]
    prepare_run_dir(run_dir, config, record, start_step=0)
    assert run_dir.child("plugins", "plugin-2.py").read_bytes() == b"# b\n"
    stored = validated({"algorithms": record["algorithms"]})
    assert run_algorithm_specs(stored, run_dir) == [(f"{run_dir.path}/plugins/plugin.py:One", {}),
                                                    (f"{run_dir.path}/plugins/plugin-2.py:Two", {"k": 1})]
