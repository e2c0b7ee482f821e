"""The fault matrix: run identity, ownership, the lock, no silent restart, safe loading, errors.

Each case launches the real CLI (``python -m labelfree.train`` / ``labelfree.eval`` /
``labelfree.analyze``) against a real run directory and checks the one-line message and that
every file that existed before is byte for byte unchanged (sha256 of every file).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from labelfree.checkpoint import load_checkpoint
from labelfree.config import run_name
from labelfree.rundir import RunDir, RunLock, write_atomic


def file_hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


@pytest.fixture
def cli(run_module):
    return partial(run_module, "labelfree.train")


def one_line_error(proc, fragment: str) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert fragment in out, out[-3000:]
    assert "Traceback" not in out, out[-3000:]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_overrides) -> Path:
    """One completed tiny run (trained once per module; tests copy it before touching it)."""
    root = tmp_path_factory.mktemp("finished")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
    run = root / "run"
    subprocess.run(
        [sys.executable, "-m", "labelfree.train", *tiny_overrides, f"hydra.run.dir={run}"],
        cwd=root,
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert RunDir(run).read_status()["status"] == "completed"
    return run


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    return run


# ------------------------------------------------------------------------------------------
# 1. run identity
# ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sweep_over_any_key_gives_one_completed_run_per_config(cli, tmp_path, tiny_overrides):
    proc = cli(
        "-m",
        *tiny_overrides,
        "trainer.epochs=1",
        "method.temperature=0.2,0.5",
        "seed=0,1",
        f"paths.output_dir={tmp_path}",
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = tmp_path / "sweeps" / "adhoc"
    runs = sorted(p.parent for p in sweep.glob("*/run.json"))
    assert len(runs) == 4
    names = {p.name for p in runs}
    assert len(names) == 4
    # 9 overrides: too long to list, so the name keeps the first ones and hashes the config
    assert all(n.startswith("digits-small_cnn-simclr-s") and "more-" in n for n in names), names
    temps = set()
    for run in runs:
        status = RunDir(run).read_status()
        assert status["status"] == "completed"
        assert status["name"] == run.name
        temps.add((status["seed"], status["config"]["method"]["temperature"]))
        assert (
            f"method.temperature={status['config']['method']['temperature']}"
            in (status["identity"]["overrides"])
        )
        assert [r["epoch"] for r in read_jsonl(run / "metrics.jsonl")] == [0, 1]
    assert temps == {(0, 0.2), (0, 0.5), (1, 0.2), (1, 0.5)}
    summary = json.loads((sweep / "sweep_summary.json").read_text())
    assert summary["counts"] == {"completed": 4}


def test_run_name_is_deterministic_readable_and_hashed_when_long(compose_train):
    cfg = compose_train("method.temperature=0.2")
    assert run_name(cfg, ["method.temperature=.20", "logger=wandb", "seed=0"]) == (
        "digits-small_cnn-simclr-s0-method.temperature=0.2"
    )
    assert run_name(cfg, ["trainer.device=cpu", "paths.output_dir=/x", "resume=auto"]) == (
        "digits-small_cnn-simclr-s0"
    )
    long = [
        "method.temperature=0.2",
        "trainer.epochs=20",
        "trainer.batch_size=128",
        "eval.schedule=log:10",
        "metrics.kmeans.n_runs=5",
        "trainer.warmup_epochs=2",
    ]
    name = run_name(cfg, long)
    assert len(name) < 100
    assert name.startswith("digits-small_cnn-simclr-s0-eval.schedule=log:10,")
    assert "more-" in name
    other = compose_train("method.temperature=0.3")
    assert run_name(other, long) != name  # the hash is of the whole result-relevant config
    assert run_name(compose_train("experiment=demo"), ["experiment=demo"]).endswith(
        "-experiment=demo"
    )
    assert run_name(compose_train("experiment=demo"), ["experiment=demo"], factor_experiment=True)


def test_imagefolder_datasets_are_named_by_their_folder(compose_train):
    cfg = compose_train("data=imagefolder", "data.root=/data/stl10-jpeg/")
    assert cfg.data.name == "stl10-jpeg"
    assert cfg.data.loader == "imagefolder"
    other = compose_train("data=imagefolder", "data.root=/data/cifar10-jpeg")
    assert run_name(cfg, []) != run_name(other, [])


@pytest.mark.slow
def test_relaunch_with_one_value_changed_trains_elsewhere_and_leaves_the_run(
    cli, run_copy, tiny_overrides
):
    before = file_hashes(run_copy)
    parent = run_copy.parent
    proc = cli(
        *tiny_overrides, "method.temperature=0.3", f"paths.output_dir={parent / 'out'}", cwd=parent
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert file_hashes(run_copy) == before
    (new,) = (parent / "out" / "runs").iterdir()
    status = RunDir(new).read_status()
    assert "method.temperature=0.3" in status["identity"]["overrides"]
    assert status["status"] == "completed"


@pytest.mark.slow
def test_a_run_moved_to_another_machine_resumes_with_its_settings_changed(
    cli, run_copy, tmp_path, tiny_overrides
):
    """Paths, device, workers, logger and evaluation batch size may differ on the new machine."""
    moved = tmp_path / "elsewhere" / "scratch" / "run"
    shutil.move(run_copy, moved)
    RunDir(moved).update_status(status="interrupted")  # as if stopped before the move
    proc = cli(
        *tiny_overrides,
        f"hydra.run.dir={moved}",
        f"paths.output_dir={tmp_path / 'other-outputs'}",
        "trainer.device=cpu",
        "trainer.num_workers=0",
        "eval.batch_size=64",
        "logger=csv",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "Resumed from" in proc.stdout
    assert RunDir(moved).read_status()["status"] == "completed"
    assert [r["epoch"] for r in read_jsonl(moved / "metrics.jsonl")] == [0, 1, 2]


@pytest.mark.slow
def test_paths_with_run_names_need_no_quoting(run_module, tmp_path, finished_run):
    run = tmp_path / "digits-small_cnn-simclr-s0-method.temperature=0.2,trainer.epochs=2"
    shutil.copytree(finished_run, run)
    proc = run_module(
        "labelfree.eval", f"checkpoint={run}/checkpoints/last.pt", "output=m.json", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "m.json").read_text())["sup/linear_probe_acc"] > 0.1


# ------------------------------------------------------------------------------------------
# 2. a launch refused before it owns the run changes nothing
# ------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["resume=RUN", "method.temperature=0.9"], "was trained with a different config"),
        (["resume=never"], "resume=never but"),
        (["seed=abc"], "seed='abc' must be a non-negative integer"),
        (["eval.schedule=3"], "eval.schedule=3 is not understood"),
        (["eval.schedule=[a]"], "eval.schedule=['a'] must list epochs as integers"),
        (["method.optimizer.lr=abc"], "method.optimizer.lr='abc' must be a positive number"),
        (["method.optimizer.lr=-1"], "method.optimizer.lr=-1 must be a positive number"),
        (["method.optimizer.momentum=-0.5"], "method.optimizer.momentum=-0.5 must be a number"),
        (["trainer.batch_size=5000"], "trained with a different config (trainer.batch_size"),
        (["resume=/no/such/run"], "resume=/no/such/run: no checkpoint there"),
    ],
)
def test_refused_launch_leaves_every_file_unchanged(
    cli, run_copy, overrides, message, tiny_overrides
):
    before = file_hashes(run_copy)
    overrides = [o.replace("RUN", str(run_copy)) for o in overrides]
    proc = cli(*tiny_overrides, *overrides, f"hydra.run.dir={run_copy}", cwd=run_copy.parent)
    one_line_error(proc, message)
    assert file_hashes(run_copy) == before


@pytest.mark.slow
def test_missing_dataset_on_relaunch_leaves_the_run_unchanged(cli, tmp_path, tiny_overrides):
    folder = tmp_path / "tiny-folder"
    _image_folder(folder)
    args = [*tiny_overrides, "data=imagefolder", f"data.root={folder}", "data.image_size=16"]
    args += ["data.train_per_class=null", "data.test_per_class=null"]
    args += ["arch.widths=[8,16]", "data.num_classes=3", "trainer.batch_size=8"]
    run = tmp_path / "run"
    proc = cli(*args, f"hydra.run.dir={run}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert RunDir(run).read_status()["data"] == "tiny-folder"
    before = file_hashes(run)
    (tmp_path / "other").mkdir()
    moved = folder.rename(tmp_path / "other" / folder.name)
    proc = cli(*args, f"hydra.run.dir={run}", cwd=tmp_path)
    one_line_error(proc, f"data.root={folder} has no train/ and test/ folder")
    assert file_hashes(run) == before
    # the same folder found under another parent (the path is not part of the identity, the
    # folder's name is): resumes
    args = [a.replace(str(folder), str(moved)) for a in args]
    proc = cli(*args, f"hydra.run.dir={run}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_refused_launch_in_a_fresh_directory_records_why(cli, tmp_path, tiny_overrides):
    run = tmp_path / "fresh"
    proc = cli(*tiny_overrides, "seed=abc", f"hydra.run.dir={run}", cwd=tmp_path)
    one_line_error(proc, "seed='abc'")
    status = RunDir(run).read_status()
    assert status["status"] == "failed"
    assert status["error"].startswith("seed='abc' must be a non-negative integer")
    assert not (run / "run.lock").read_text()  # released


@pytest.mark.slow
def test_a_refused_sweep_job_is_named_by_the_sweep_summary(
    cli, finished_run, tmp_path, tiny_overrides
):
    """The job for an existing completed run is refused (resume=never): its run is untouched,
    but the summary lists the job as failed, beside its sibling that completed."""
    sweep = tmp_path / "sweeps" / "adhoc"
    done = sweep / "job0"
    shutil.copytree(finished_run, done)
    before = file_hashes(done)
    proc = cli(
        "-m",
        *tiny_overrides,
        "resume=never",
        "seed=0,1",
        f"paths.output_dir={tmp_path}",
        "hydra.sweep.subdir=job${hydra.job.num}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert file_hashes(done) == before
    summary = json.loads((sweep / "sweep_summary.json").read_text())
    assert summary["counts"] == {"completed": 1, "failed": 1}
    (failed,) = summary["not_completed"]
    assert failed["run_dir"] == str(done)
    assert failed["error"].startswith("resume=never but")
    assert "resume=never but" in (sweep / "sweep_summary.md").read_text()


# ------------------------------------------------------------------------------------------
# 3. the lock
# ------------------------------------------------------------------------------------------


def test_lock_names_its_holder_and_a_dead_holder_is_taken_over(tmp_path, caplog):
    holder = RunLock(tmp_path)
    holder.acquire()
    with pytest.raises(RuntimeError, match=rf"being trained by pid {os.getpid()} on "):
        RunLock(tmp_path).acquire()
    holder.release()
    assert (tmp_path / "run.lock").read_text() == ""
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    (tmp_path / "run.lock").write_text(
        json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout), "started": "then"})
    )
    with caplog.at_level("WARNING"), RunLock(tmp_path):
        assert "Taking over the lock of pid" in caplog.text
        assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()


HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def _hold_lock(path: Path, seconds: float) -> subprocess.Popen:
    """Another process holding the flock on ``path`` for ``seconds`` (without naming itself)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(path), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline() == "held\n"
    return holder


def test_is_held_probes_the_lock_without_writing(tmp_path):
    """A reader (the sweep summary) tells a live run from a dead one by its lock: no file, no
    holder; a holder in another process, held; the probe changes no file and leaves it free."""
    assert not RunLock.is_held(tmp_path)
    assert not (tmp_path / "run.lock").exists()  # nothing created
    lock = tmp_path / "run.lock"
    holder = _hold_lock(lock, 30)
    try:
        before = lock.stat()
        assert RunLock.is_held(tmp_path)
        assert (lock.stat().st_mtime_ns, lock.stat().st_size) == (before.st_mtime_ns, 0)
    finally:
        holder.kill()
        holder.wait()
    assert not RunLock.is_held(tmp_path)  # the kernel freed the lock of the dead process
    with RunLock(tmp_path):  # and the probe left it free
        assert RunLock.is_held(tmp_path)


def test_acquire_waits_out_a_holder_that_has_not_named_itself(tmp_path):
    """A lock held for a moment by someone who writes no name (a probing reader) is waited for,
    up to RunLock.UNNAMED_HOLDER_WAIT_S; a named holder is refused at once (test above)."""
    holder = _hold_lock(tmp_path / "run.lock", 0.3)
    try:
        with RunLock(tmp_path):
            assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()
    finally:
        holder.wait()
    holder = _hold_lock(tmp_path / "run.lock", 30)
    try:
        t0 = time.monotonic()
        with pytest.raises(RuntimeError, match="being trained by another process"):
            RunLock(tmp_path).acquire()
        assert time.monotonic() - t0 >= RunLock.UNNAMED_HOLDER_WAIT_S
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_second_process_on_a_running_run_exits_naming_the_holder(cli, tmp_path, tiny_overrides):
    run = tmp_path / "run"
    args = [*tiny_overrides, "trainer.epochs=30", f"hydra.run.dir={run}"]
    first = start_train(args, cwd=tmp_path, output=False)
    try:
        _wait_for(lambda: (run / "metrics.jsonl").exists(), first)
        second = cli(*args, cwd=tmp_path)
        one_line_error(second, f"is being trained by pid {first.pid} on {socket.gethostname()}")
        assert first.wait(timeout=300) == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            first.kill()
    assert [r["epoch"] for r in read_jsonl(run / "metrics.jsonl")] == list(range(31))
    assert RunDir(run).read_status()["status"] == "completed"
    assert not list(run.rglob("*.tmp"))


def test_temporary_files_are_unique_per_process(tmp_path, monkeypatch):
    names = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (names.append(Path(a).name), real(a, b)))
    write_atomic(tmp_path / "x.json", "1")
    write_atomic(tmp_path / "x.json", "2")
    assert len(set(names)) == 2
    assert all(n.startswith(f".x.json.{os.getpid()}.") for n in names)


# ------------------------------------------------------------------------------------------
# 4. no silent restart
# ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_records_without_checkpoint_refuse_then_restart_moves_them_aside(
    cli, run_copy, tiny_overrides
):
    (run_copy / "checkpoints" / "last.pt").unlink()
    before = file_hashes(run_copy)
    proc = cli(*tiny_overrides, f"hydra.run.dir={run_copy}", cwd=run_copy.parent)
    one_line_error(proc, "holds records up to epoch 2 but")
    assert "checkpoints/last.pt is missing" in proc.stdout + proc.stderr
    assert "resume=restart" in proc.stdout + proc.stderr
    assert file_hashes(run_copy) == before

    proc = cli(*tiny_overrides, "resume=restart", f"hydra.run.dir={run_copy}", cwd=run_copy.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (aside,) = (run_copy / ".restarts").iterdir()
    for name, digest in before.items():  # every old file, moved, not changed (the lock stays)
        assert name == "run.lock" or file_hashes(aside)[name] == digest
    assert [r["epoch"] for r in read_jsonl(run_copy / "metrics.jsonl")] == [0, 1, 2]
    assert RunDir(run_copy).read_status()["status"] == "completed"


# ------------------------------------------------------------------------------------------
# 5. safe loading
# ------------------------------------------------------------------------------------------


class _Payload:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.slow
def test_a_checkpoint_that_would_run_code_is_refused(
    cli, run_module, run_copy, tmp_path, tiny_overrides
):
    marker = tmp_path / "payload-ran"
    state = torch.load(run_copy / "checkpoints" / "last.pt", weights_only=True)
    state["model"] = _Payload(marker)
    torch.save(state, run_copy / "checkpoints" / "last.pt")
    before = file_hashes(run_copy)
    with pytest.raises(ValueError, match="was refused: loading it would run code"):
        load_checkpoint(run_copy / "checkpoints" / "last.pt")
    proc = cli(*tiny_overrides, f"hydra.run.dir={run_copy}", cwd=tmp_path)
    one_line_error(proc, "was refused: loading it would run code")
    evaluated = run_module(
        "labelfree.eval", f"checkpoint={run_copy}/checkpoints/last.pt", cwd=tmp_path
    )
    assert evaluated.returncode == 1
    assert "was refused: loading it would run code" in evaluated.stderr
    assert not marker.exists()
    assert file_hashes(run_copy) == before


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["empty", "truncated", "weights"])
def test_damaged_checkpoint_stops_with_the_fix(cli, run_copy, damage, tiny_overrides):
    path = run_copy / "checkpoints" / "last.pt"
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:  # weights that do not fit the checkpoint's own config
        state = torch.load(path, weights_only=True)
        key = next(k for k, v in state["model"].items() if v.ndim == 4)
        state["model"][key] = torch.zeros(3, 3, 3, 3)
        torch.save(state, path)
    before = file_hashes(run_copy)
    proc = cli(*tiny_overrides, f"hydra.run.dir={run_copy}", cwd=run_copy.parent)
    fragment = (
        "does not fit the model its own config builds" if damage == "weights" else ("is unreadable")
    )
    one_line_error(proc, fragment)
    assert "resume=restart" in proc.stdout + proc.stderr
    assert file_hashes(run_copy) == before


# ------------------------------------------------------------------------------------------
# 6. clear errors
# ------------------------------------------------------------------------------------------


def _image_folder(root: Path, per_class: int = 4) -> list[Path]:
    """A tiny ImageFolder of real JPEG files: 3 classes x per_class, train and test."""
    rng = np.random.default_rng(0)
    paths = []
    for split in ("train", "test"):
        for c in range(3):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = (rng.random((16, 16, 3)) * 80 + c * 80).astype(np.uint8)
                path = folder / f"{i}.jpg"
                Image.fromarray(pixels).save(path, quality=90)
                paths.append(path)
    return paths


def test_bad_image_files_are_named_or_skipped(tmp_path, caplog):
    from labelfree.data import load_imagefolder

    paths = _image_folder(tmp_path, per_class=6)
    paths[0].write_bytes(b"")  # zero bytes
    paths[1].write_bytes(paths[1].read_bytes()[:60])  # truncated
    paths[2].write_bytes(b"not an image at all")  # corrupt
    with pytest.raises(ValueError, match="3 image file") as err:
        load_imagefolder(root=str(tmp_path), image_size=16)
    for path in paths[:3]:
        assert str(path) in str(err.value)
    assert "data.skip_bad_images=true" in str(err.value)
    with caplog.at_level("WARNING"):
        train, test, _ = load_imagefolder(root=str(tmp_path), image_size=16, skip_bad_images=True)
    assert len(train) == 3 * 6 - 3
    assert len(test) == 3 * 6
    assert "left out 3 file(s)" in caplog.text


def test_string_labels_are_mapped_to_class_ids(tmp_path, run_module):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    z = (4 * rng.normal(size=(3, 8))[y] + rng.normal(size=(200, 8))).astype(np.float32)
    names = np.array(["cat", "dog", "emu"])
    np.save(tmp_path / "z.npy", z)
    np.save(tmp_path / "y.npy", y)
    np.save(tmp_path / "ys.npy", names[y])
    for labels, out in (("y.npy", "int.json"), ("ys.npy", "str.json")):
        proc = run_module(
            "labelfree.eval", "embeddings=z.npy", f"labels={labels}", f"output={out}", cwd=tmp_path
        )
        assert proc.returncode == 0, proc.stderr
    assert "String labels mapped to class ids (sorted): cat=0, dog=1, emu=2" in proc.stdout
    as_int = json.loads((tmp_path / "int.json").read_text())
    as_str = json.loads((tmp_path / "str.json").read_text())
    assert as_str.pop("eval_s") > 0
    assert as_int.pop("eval_s") > 0
    assert as_str == as_int
    np.save(tmp_path / "yo.npy", np.array([object()] * 200, dtype=object), allow_pickle=True)
    proc = run_module("labelfree.eval", "embeddings=z.npy", "labels=yo.npy", cwd=tmp_path)
    assert proc.returncode == 1
    assert "holds Python objects" in proc.stderr


def _mount_tmpfs(path: Path, *options: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    opts = ",".join(options)
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True
    )
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")


@pytest.fixture
def mounts():
    mounted: list[Path] = []
    yield mounted
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.slow
def test_read_only_checkpoint_folder_fails_with_the_path(cli, tmp_path, mounts, tiny_overrides):
    run = tmp_path / "run"
    _mount_tmpfs(run / "checkpoints", "ro", "size=1m")
    mounts.append(run / "checkpoints")
    proc = cli(*tiny_overrides, f"hydra.run.dir={run}", cwd=tmp_path)
    one_line_error(proc, "Read-only file system")
    status = RunDir(run).read_status()
    assert status["status"] == "failed"
    assert "checkpoints" in status["error"]


@pytest.mark.slow
def test_full_disk_fails_cleanly_and_keeps_the_records(cli, tmp_path, mounts, tiny_overrides):
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "size=24m")
    mounts.append(disk)
    run = disk / "run"
    proc = start_train([*tiny_overrides, "trainer.epochs=8", f"hydra.run.dir={run}"], cwd=tmp_path)
    _wait_for(lambda: len(RunDir(run).read_records()) >= 2, proc)
    filler = disk / "filler"
    with open(filler, "wb") as f, contextlib.suppress(OSError):  # fill the disk
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    filler_size = filler.stat().st_size
    os.truncate(filler, max(filler_size - 64 * 1024, 0))  # room for run.json, not a checkpoint
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1, out[-3000:]
    assert "no space left on device: " in out
    assert "Traceback" not in out
    status = RunDir(run).read_status()
    assert status["status"] == "failed"
    assert status["error"].startswith("no space left on device: ")
    records = read_jsonl(run / "metrics.jsonl")
    assert [r["epoch"] for r in records] == list(range(len(records)))
    assert len(records) >= 2
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]
    load_checkpoint(run / "checkpoints" / "last.pt")  # the last good checkpoint is intact
    assert errno.ENOSPC  # (the errno the message stands for)


@pytest.mark.slow
def test_ctrl_c_marks_the_run_interrupted_and_a_relaunch_resumes(cli, tmp_path, tiny_overrides):
    run = tmp_path / "run"
    args = [*tiny_overrides, "trainer.epochs=6", f"hydra.run.dir={run}"]
    proc = start_train(args, cwd=tmp_path)
    _wait_for(lambda: (RunDir(run).read_status().get("last_epoch") or 0) >= 1, proc)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-3000:]
    status = RunDir(run).read_status()
    assert status["status"] == "interrupted"
    assert "Ctrl-C" in status["error"]
    assert not (run / "run.lock").read_text()
    resumed = cli(*args, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [r["epoch"] for r in read_jsonl(run / "metrics.jsonl")] == list(range(7))


# ------------------------------------------------------------------------------------------
# 7. analysis integrity
# ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_analysis_counts_a_copied_run_once_and_never_writes_into_a_run(
    run_module, finished_run, tmp_path
):
    runs = tmp_path / "runs"
    shutil.copytree(finished_run, runs / "a")
    shutil.copytree(finished_run, runs / "b")  # a copy: same identity
    status = RunDir(runs / "b").read_status()
    RunDir(runs / "b").update_status(status="running", last_epoch=1)
    write_atomic(runs / "b" / "metrics.jsonl", (runs / "b" / "metrics.jsonl").read_text())
    out = tmp_path / "analysis"
    proc = run_module(
        "labelfree.analyze",
        f"runs={runs}",
        f"output={out}",
        "figures.enabled=false",
        "bootstrap.n_resamples=20",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    skipped = (out / "skipped_runs.csv").read_text()
    assert "duplicate" in skipped
    assert f"as {runs / 'a'}" in skipped
    assert "Loaded 1 of 2 runs" in proc.stdout
    assert status["seed"] == 0
    for inside in (runs / "a", runs / "a" / "analysis"):
        before = file_hashes(runs / "a")
        proc = run_module("labelfree.analyze", f"runs={runs}", f"output={inside}", cwd=tmp_path)
        assert proc.returncode == 1
        assert "the run directory" in proc.stderr
        assert "write the analysis elsewhere" in proc.stderr
        assert file_hashes(runs / "a") == before
        assert not (runs / "a" / "analysis").exists()


@pytest.mark.slow
def test_reproduce_never_leaves_a_half_written_output(run_module, tmp_path, tiny_overrides):
    args = [
        "seed=0",
        "method=simclr",
        *tiny_overrides,
        f"paths.output_dir={tmp_path / 'outputs'}",
        f"output={tmp_path / 'demo'}",
        "analysis.figures.enabled=false",
        "analysis.bootstrap.n_resamples=20",
    ]
    proc = run_module("labelfree.reproduce", *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    before = file_hashes(tmp_path / "demo")
    assert "main_table.md" in before
    proc = run_module(
        "labelfree.reproduce",
        *args,
        "train=false",
        "analysis.correlation.targets=[sup/no_such_key]",
        cwd=tmp_path,
    )
    assert proc.returncode == 1
    assert "None of the targets" in proc.stderr
    assert file_hashes(tmp_path / "demo") == before  # the previous output, whole
    assert (tmp_path / ".demo.incomplete" / "runs.csv").is_file()  # the partial one, aside


def start_train(args: list[str], *, cwd: Path, output: bool = True) -> subprocess.Popen:
    """``python -m labelfree.train ARGS`` in the background (stdout+stderr captured as text)."""
    return subprocess.Popen(
        [sys.executable, "-m", "labelfree.train", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE if output else subprocess.DEVNULL,
        stderr=subprocess.STDOUT if output else subprocess.DEVNULL,
        text=True,
    )


def _wait_for(condition, proc, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with contextlib.suppress(OSError, ValueError):
            if condition():
                return
        if proc.poll() is not None:
            raise AssertionError(f"the process ended (status {proc.returncode}) too early")
        time.sleep(0.05)
    raise AssertionError("timed out")
