"""A run directory is never lost: damaged checkpoints are refused (or recovered from on
request, moving the damaged files aside), and one process writes a run at a time."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf

from lealla_tf import fileio, runs
from support import harness


def _save_three(directory):
    """ckpt-1..3 of a small variable whose value is the step."""
    v = tf.Variable(np.zeros((64, 8), np.float32))
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=v), directory, max_to_keep=3)
    for step in (1, 2, 3):
        v.assign(np.full((64, 8), step, np.float32))
        manager.save(checkpoint_number=step)
    return v


def _listing(directory):
    return sorted(os.listdir(directory))


def test_new_and_intact_folders(tmp_path):
    assert runs.resume_checkpoint(str(tmp_path / "none")) is None
    assert runs.resume_checkpoint(str(tmp_path)) is None
    _save_three(str(tmp_path))
    assert runs.resume_checkpoint(str(tmp_path)).endswith("ckpt-3")
    assert runs.checkpoint_problem(str(tmp_path / "ckpt-2")) is None


@pytest.mark.parametrize("damage, says", [
    ("state", "state file naming the latest checkpoint) is missing"),
    ("index", "ckpt-3.index is missing"),
    ("data", "ckpt-3.data-00000-of-00001 is missing"),
    ("truncate", "ckpt-3 cannot be read"),
])
def test_damaged_newest_is_refused_and_nothing_changes(tmp_path, damage, says):
    d = str(tmp_path)
    _save_three(d)
    harness.damage_checkpoint(d, 3, damage, keep=0.5)
    before = _listing(d)
    with pytest.raises(runs.DamagedRunError) as err:
        runs.resume_checkpoint(d)
    message = str(err.value)
    assert says in message and "ckpt-1, ckpt-2" in message and "--recover" in message
    assert _listing(d) == before


def test_recover_resumes_from_the_newest_good_checkpoint_and_keeps_the_rest(tmp_path):
    d = str(tmp_path)
    _save_three(d)
    data3 = os.path.join(d, "ckpt-3.data-00000-of-00001")
    with open(data3, "r+b") as f:
        f.truncate(10)
    path = runs.resume_checkpoint(d, recover=True)
    assert path.endswith("ckpt-2")
    damaged = os.path.join(d, runs.DAMAGED_DIR)
    (stamp,) = os.listdir(damaged)
    assert sorted(os.listdir(os.path.join(damaged, stamp))) == [
        "ckpt-3.data-00000-of-00001", "ckpt-3.index"]
    state = tf.train.get_checkpoint_state(d)
    assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == ["ckpt-1",
                                                                              "ckpt-2"]
    # Training goes on: the next save is ckpt-3 again and the older ones stay.
    v = tf.Variable(np.zeros((64, 8), np.float32))
    ckpt = tf.train.Checkpoint(v=v)
    ckpt.restore(path).assert_existing_objects_matched()
    assert float(v.numpy()[0, 0]) == 2.0
    manager = tf.train.CheckpointManager(ckpt, d, max_to_keep=3)
    manager.save(checkpoint_number=3)
    assert runs.resume_checkpoint(d).endswith("ckpt-3")
    assert os.path.exists(os.path.join(d, "ckpt-1.index"))


def test_recover_refuses_when_nothing_reads(tmp_path):
    d = str(tmp_path)
    _save_three(d)
    for step in (1, 2, 3):
        os.remove(os.path.join(d, f"ckpt-{step}.index"))
    before = _listing(d)
    with pytest.raises(runs.DamagedRunError, match="none of its checkpoints"):
        runs.resume_checkpoint(d, recover=True)
    assert _listing(d) == before


def test_one_writer_per_run_names_the_holder(tmp_path):
    run = str(tmp_path / "run")
    with runs.writer(run):
        with pytest.raises(runs.RunLockedError) as err:
            with runs.writer(run):
                pass
        assert f"pid {os.getpid()}" in str(err.value) and run in str(err.value)
    with runs.writer(run):  # released at the end of the block
        pass


def test_one_writer_on_stores_without_locks():
    run = "ram://runs/locked"
    with runs.writer(run):
        with pytest.raises(runs.RunLockedError, match="another writer"):
            with runs.writer(run):
                pass
    assert not fileio.exists(fileio.join(run, runs.LOCK_FILE))


def test_folder_outputs_have_one_writer_and_clean_up_after_a_killed_one(tmp_path):
    out = str(tmp_path / "export")
    stale = tmp_path / ".export.tmp-deadbeef"
    stale.mkdir()
    (stale / "half_written.bin").write_bytes(b"\0" * 10)
    with fileio.atomic_dir(out, overwrite=False) as tmp:
        assert not stale.exists()  # a killed writer's staging folder is gone
        with open(os.path.join(tmp, "a.txt"), "w") as f:
            f.write("new")
        with pytest.raises(fileio.LockedError, match=f"pid {os.getpid()}"):
            with fileio.atomic_dir(out, overwrite=True):
                pass
    assert open(os.path.join(out, "a.txt")).read() == "new"
    assert sorted(os.listdir(tmp_path)) == ["export"]  # no lock or staging files left
    # A failed writer leaves the earlier output as it was.
    with pytest.raises(RuntimeError):
        with fileio.atomic_dir(out, overwrite=True) as tmp:
            with open(os.path.join(tmp, "a.txt"), "w") as f:
                f.write("broken")
            raise RuntimeError("killed half way")
    assert open(os.path.join(out, "a.txt")).read() == "new"
    assert sorted(os.listdir(tmp_path)) == ["export"]
