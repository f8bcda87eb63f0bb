"""Container records: atomic save/load, lookup by id, prefix and name, liveness."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from containers import state
from containers.cli import UserError
from containers.trees import replace_file


def make_record(root: Path, cid: str, name: str) -> state.ContainerRecord:
    d = os.path.join(state.containers_dir(root), cid)
    os.makedirs(d)
    record = state.ContainerRecord(id=cid, name=name, dir=d, layers=["/l1", "/l2"])
    state.save(record)
    state.reserve_name(root, name, cid)
    return record


def test_a_saved_record_loads_back_equal(tmp_path: Path) -> None:
    record = make_record(tmp_path, "abc123", "web")
    assert state.load(record.dir) == record
    assert record.upper_dir == os.path.join(record.dir, "upper")
    assert os.listdir(record.dir) == ["state.json"]
    assert state.load(Path(record.dir)) == record  # a Path does as well


def test_find_container_by_id_prefix_and_name(tmp_path: Path) -> None:
    make_record(tmp_path, "abc123", "web")
    make_record(tmp_path, "abd456", "db")
    assert state.find_container(tmp_path, "abc123").name == "web"
    assert state.find_container(tmp_path, "abd").name == "db"
    assert state.find_container(tmp_path, "web").id == "abc123"
    with pytest.raises(UserError, match="ambiguous"):
        state.find_container(tmp_path, "ab")
    with pytest.raises(UserError, match="no such container"):
        state.find_container(tmp_path, "zzz")


def test_a_name_can_be_held_by_one_container_only(tmp_path: Path) -> None:
    make_record(tmp_path, "abc123", "web")
    with pytest.raises(UserError, match="already in use"):
        state.reserve_name(tmp_path, "web", "other")
    state.release_name(tmp_path, "web", "abc123")
    state.reserve_name(tmp_path, "web", "other")


def test_a_running_record_whose_process_is_gone_reads_as_exited(tmp_path: Path) -> None:
    record = make_record(tmp_path, "abc123", "web")
    record.status = state.RUNNING
    record.pid, record.pid_start = os.getpid(), state.process_start_time(os.getpid())
    assert state.live_status(record) == state.RUNNING
    record.pid_start = (record.pid_start or 0) + 1  # the pid was reused by another process
    assert state.live_status(record) == state.EXITED


def test_a_failed_save_keeps_the_old_record_and_leaves_no_temporary_file(
    tmp_path: Path,
) -> None:
    record = make_record(tmp_path, "abc123", "web")
    record.command = [object()]  # type: ignore[list-item]  # not JSON
    with pytest.raises(TypeError):
        state.save(record)
    target = os.path.join(record.dir, "state.json")
    with pytest.raises(UnicodeEncodeError):  # a write that fails half way
        replace_file(target, "{}\ud800")
    assert os.listdir(record.dir) == ["state.json"]
    assert state.load(record.dir).command == []
