"""labelfree's SLURM path against a real scheduler (``bash scripts/slurm_cluster.sh start``).

Every scenario is a real ``labelfree-train -m hydra/launcher=slurm ...`` (or
``labelfree-reproduce``) sweep: real sbatch/squeue/sacct/scancel/scontrol, submitit's SLURM
executor, wandb offline. The sweeps of the selected tests start together when the first of them
runs (the scheduler runs their tasks side by side) and each test then checks its own; a driver
thread per scenario does what an operator or the scheduler would do meanwhile (signal, cancel,
time limits). Teardown cancels every job the sweeps submitted.

Signals are made to land mid-training however fast the machine is: the driver freezes the
training process (SIGSTOP), the scheduler signals it (``scancel --signal=USR2``, or
``--signal=USR2@15`` when the allocation nears its time limit), the driver waits until the
kernel shows the signal pending, then lets the process go on (SIGCONT), and submitit's handler
runs at once. Runs are tiny (digits, 400 images, 3 steps per epoch, 1 CPU per task).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from labelfree.records import TIMING_KEYS
from labelfree.rundir import RunLock
from labelfree.sweep.summary import KILLED, KILLED_ERROR

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
log = logging.getLogger(__name__)

#: The defaults of conf/hydra/launcher/slurm.yaml ask for a GPU, 8 CPUs and 32 GB per task.
SLURM_CPU = [
    "hydra/launcher=slurm",
    "hydra.launcher.gpus_per_node=0",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
]
#: The run that is preempted, time-limited and compared (10 epochs: room for a signal).
REFERENCE = ["method=simclr", "seed=0", "trainer.epochs=10"]
#: submitit takes a USR2 after min(0.8 x limit, limit - 10 min) for the time limit: 15 minutes
#: leaves 5 minutes in which a USR2 is a preemption.
PREEMPTIBLE = "hydra.launcher.timeout_min=15"
#: How long a sweep, a run or a driver may take before a test calls it hung: 5 times what the
#: slowest scenario took on 2 cores shared with another test suite (2 minutes), so that a busier
#: machine (CI runners, this project's own experiments) slows the tests down without failing them.
WAIT_S = 600
ENV = {"PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0", "WANDB_MODE": "offline"}
# Unset, as in a user's shell (WANDB_SERVICE: wandb exports it once a process has used W&B, and
# a job would then talk to that process's service instead of starting its own).
for _var in ("OMP_NUM_THREADS", "WORLD_SIZE", "RANK", "LOCAL_RANK", "WANDB_SERVICE"):
    ENV[_var] = None


# --- the scheduler's view ---------------------------------------------------------------------


def sacct_states(job_id: str) -> list[str]:
    """Every state of the job's allocations in the accounting database, oldest first."""
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-D", "-j", job_id, "-o", "State"],
        capture_output=True,
        text=True,
        check=True,
    )
    return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]


def sacct_history(job_id: str) -> list[str]:
    """The job's states (:func:`sacct_states`) once its last allocation has ended."""

    def ended():
        states = sacct_states(job_id)
        return states if states and states[-1] not in ("PENDING", "RUNNING") else None

    return wait_until(ended, 60, f"sacct: job {job_id} ended", 0.5)


def sacct_tasks(array_id: str) -> dict[str, str]:
    """``{job id: last state}`` of every task of an array job."""
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-j", array_id, "-o", "JobID,State"],
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(line.split("|")[:2] for line in out.stdout.splitlines() if line.strip())


def finished(tasks: dict[str, str], n: int) -> dict[str, str] | None:
    """``tasks`` (sacct_tasks) once all ``n`` have left PENDING/RUNNING (a task that has written
    its result may still be running for a moment)."""
    done = len(tasks) == n and not set(tasks.values()) & {"PENDING", "RUNNING", "REQUEUED"}
    return tasks if done else None


def scontrol_job(job_id: str) -> dict[str, str]:
    """``scontrol show job`` as a dict (empty once the controller has forgotten the job)."""
    out = subprocess.run(
        ["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, check=False
    )
    return dict(re.findall(r"(\w+)=(\S*)", out.stdout)) if out.returncode == 0 else {}


def usr2_arrived(pid: int) -> bool:
    """Whether SIGUSR2 reached the process ``pid`` that the caller stopped (SIGSTOP).

    Pending in ``/proc/PID/status``, or already handled: slurmstepd sends SIGCONT with the
    signals it delivers, so the process may have resumed (no longer ``T``) or ended.
    """
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except FileNotFoundError:
        return True
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    if not fields["State"].strip().startswith("T"):
        return True
    pending = int(fields["SigPnd"], 16) | int(fields["ShdPnd"], 16)
    return bool(pending & (1 << (signal.SIGUSR2 - 1)))


# --- waiting, run directories -----------------------------------------------------------------


def wait_until(predicate: Callable, timeout_s: float, what: str, interval: float = 0.1):
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def read_status(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "run.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def strip_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def freeze_until_usr2(pid: int, send: Callable[[], None] | None = None, timeout_s: float = 90):
    """Stop ``pid``, ``send`` the signal (or let the scheduler send it), wait for it, continue.

    Returns the seconds waited for the signal.
    """
    t0 = time.monotonic()
    os.kill(pid, signal.SIGSTOP)
    try:
        if send is not None:
            send()
        wait_until(lambda: usr2_arrived(pid), timeout_s, f"SIGUSR2 for pid {pid}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    return time.monotonic() - t0


# --- sweeps and drivers -----------------------------------------------------------------------


def job_ids(folder: Path) -> set[str]:
    """The SLURM job ids whose submitit folders (``.submitit/<id>[_<task>]``) are in ``folder``."""
    return {p.name.split("_")[0] for p in folder.rglob(".submitit/*") if p.is_dir()}


class Sweep:
    """A CLI sweep started in the background in its own folder (a fresh submitit folder)."""

    def __init__(self, root: Path, name: str, args: list[str], module: str = "labelfree.train"):
        self.name, self.dir = name, root / name
        self.dir.mkdir(parents=True)
        self.output = self.dir / "cli.log"
        argv = [sys.executable, "-m", module, *(["-m"] if module == "labelfree.train" else [])]
        argv += [*args, f"paths.output_dir={self.dir / 'outputs'}"]
        env = {k: v for k, v in {**os.environ, **ENV}.items() if v is not None}
        with self.output.open("w") as out:
            self.proc = subprocess.Popen(
                argv, cwd=self.dir, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        self.started = time.monotonic()

    def sweep_dir(self, experiment: str = "adhoc") -> Path:
        return self.dir / "outputs" / "sweeps" / experiment

    def run_dir(self, start: str, experiment: str = "adhoc") -> Path:
        """The run directory whose name starts with ``start`` (waits for it to appear)."""

        def find():
            found = sorted(self.sweep_dir(experiment).glob(f"{start}*/run.json"))
            return found[0].parent if found else None

        return wait_until(find, WAIT_S, f"a run directory {start}* in sweep {self.name}", 0.2)

    def wait(self, timeout_s: float = WAIT_S) -> tuple[int, str]:
        """Wait for the CLI to end: ``(exit status, output)``."""
        try:
            rc = self.proc.wait(timeout=max(1, timeout_s - (time.monotonic() - self.started)))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(
                f"sweep {self.name} still running after {timeout_s:.0f} s:\n{self.text()[-3000:]}"
            ) from None
        return rc, self.text()

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def job_ids(self) -> set[str]:
        """The SLURM job ids this sweep submitted (its submitit folders are named by them)."""
        return job_ids(self.dir)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if ids := sorted(self.job_ids()):
            subprocess.run(["scancel", *ids], capture_output=True, check=False)


class Driver:
    """A function run in a thread beside a sweep; ``result()`` re-raises what it raised."""

    def __init__(self, fn: Callable, *args):
        self._result, self._error = None, None
        self._thread = threading.Thread(target=self._run, args=(fn, *args), daemon=True)
        self._thread.start()

    def _run(self, fn, *args):
        try:
            self._result = fn(*args)
        except BaseException as err:  # handed to the test that asks
            self._error = err

    def result(self, timeout_s: float = WAIT_S):
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise AssertionError(f"driver still running after {timeout_s:.0f} s")
        if self._error is not None:
            raise self._error
        return self._result


def wait_training(run_dir: Path, *, restarts: int, after_epoch: int = 0, timeout_s=WAIT_S) -> dict:
    """``run.json`` once the run trains past ``after_epoch`` in its ``restarts``-th allocation,
    or has stopped there (any status but running)."""

    def ready():
        status = read_status(run_dir)
        if status.get("slurm_restart_count") != restarts:
            return None
        if status.get("status") != "running" or (status.get("last_epoch") or 0) > after_epoch:
            return status
        return None

    return wait_until(ready, timeout_s, f"{run_dir.name} to train (restart {restarts})", 0.05)


def preempt(run_dir: Path) -> dict:
    """Once the run has a checkpoint after epoch 1: ``scancel --signal=USR2`` its job (rank 0
    frozen so the signal lands mid-training). Returns run.json as it was then."""
    status = wait_training(run_dir, restarts=0)
    assert status["status"] == "running", status
    job = status["slurm_job_id"]
    waited = freeze_until_usr2(
        status["pid"], lambda: subprocess.run(["scancel", "--signal=USR2", job], check=True)
    )
    log.info("%s: USR2 delivered %.1f s after scancel", run_dir.name, waited)
    return status


def run_out_of_time(run_dir: Path, *, allocations: int) -> list[dict]:
    """End the run's allocation by its time limit, ``allocations`` times; return measurements.

    The job runs with a 5-minute limit and ``--signal=USR2@120``, so no signal comes before the
    run is ready, however slow the start. Once it trains, it is frozen and its time limit lowered
    to end 61-121 s later: at its next check (every 30 s) slurmctld finds the end within
    120 s + 30 s and sends the USR2 (the job is killed at the end itself, >= 30 s later).
    Submitit, told timeout_min=5 (< 10), counts it as a time limit and requeues the job, whose
    limit is then set back to 5 minutes for the next allocation. Each measurement: seconds from
    lowering the limit to the signal, and seconds the allocation had left then.
    """
    measured = []
    for restart in range(allocations):
        status = wait_training(run_dir, restarts=restart)
        if status["status"] != "running":
            break
        job, pid = status["slurm_job_id"], status["pid"]
        os.kill(pid, signal.SIGSTOP)
        try:
            started = time.mktime(
                time.strptime(scontrol_job(job)["StartTime"], "%Y-%m-%dT%H:%M:%S")
            )
            limit_min = int((time.time() - started + 61) // 60) + 1
            subprocess.run(
                ["scontrol", "update", f"JobId={job}", f"TimeLimit={limit_min}"], check=True
            )
            lowered = time.time()
            wait_until(lambda p=pid: usr2_arrived(p), 90, f"the time-limit USR2 of {job}")
            came = time.time()
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        measured.append({"after_s": came - lowered, "left_s": started + 60 * limit_min - came})

        def requeued_or_stopped(j=job, r=restart):
            if scontrol_job(j).get("Restarts") == str(r + 1):
                return "requeued"
            return read_status(run_dir).get("status") not in ("running", "interrupted")

        if wait_until(requeued_or_stopped, 60, f"{job} to be requeued or to stop") == "requeued":
            subprocess.run(["scontrol", "update", f"JobId={job}", "TimeLimit=5"], check=True)
    log.info("%s: time-limit signals %s", run_dir.name, measured)
    return measured


def kill(run_dir: Path) -> dict:
    """``scancel`` the run's job mid-training (SIGTERM, which submitit ignores, then SIGKILL
    after the cluster's KillWait); returns once the process is gone (its lock is free)."""
    status = wait_training(run_dir, restarts=0)
    subprocess.run(["scancel", status["slurm_job_id"]], check=True)
    wait_until(lambda: not RunLock.is_held(run_dir), 60, f"{run_dir.name} to die", 0.2)
    return status


class Scenario:
    """A sweep, the drivers acting on it and any process started beside it."""

    def __init__(self, sweep: Sweep, **drivers: Driver):
        self.sweep, self.drivers = sweep, drivers
        self.extra: list[subprocess.Popen] = []


def torchrun(root: Path, args: list[str]) -> subprocess.Popen:
    """The same DDP run through torchrun on this machine (the path tests/scaleout checks)."""
    folder = root / "torchrun"
    folder.mkdir(parents=True)
    env = {k: v for k, v in {**os.environ, **ENV, "OMP_NUM_THREADS": "1"}.items() if v is not None}
    with (folder / "cli.log").open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
            + ["-m", "labelfree.train", *args, f"hydra.run.dir={folder / 'run'}"],
            cwd=folder,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _start(name: str, root: Path, tiny: list[str]) -> Scenario:
    def sweep(args, **kw):
        return Sweep(root, name, [*SLURM_CPU, *tiny, *args], **kw)

    if name == "main":
        return Scenario(sweep(["method=simclr,simsiam", "seed=0,1", "trainer.epochs=2"]))
    if name == "preempt":
        s = sweep([*REFERENCE, "logger=wandb", PREEMPTIBLE, "run_name=reference,preempted"])
        return Scenario(s, preempt=Driver(lambda: preempt(s.run_dir("preempted"))))
    if name == "time_limit":
        # job0: 10 epochs (the reference run), job1: 1000 (never ends in time)
        s = sweep(
            ["method=simclr", "seed=0", "trainer.epochs=10,1000", "hydra.launcher.timeout_min=5"]
            + ["hydra.launcher.max_num_timeout=1", "hydra.sweep.subdir=job${hydra.job.num}"]
        )
        job0, job1 = (s.sweep_dir() / "job0", s.sweep_dir() / "job1")
        return Scenario(
            s,
            complete=Driver(lambda: run_out_of_time(job0, allocations=1)),
            out_of_requeues=Driver(lambda: run_out_of_time(job1, allocations=2)),
        )
    if name == "ddp":
        args = [*REFERENCE, "trainer.distributed.timeout_min=2"]
        s = sweep([*args, PREEMPTIBLE, "hydra.launcher.tasks_per_node=2"])
        scenario = Scenario(s, preempt=Driver(lambda: preempt(s.run_dir("digits"))))
        scenario.extra.append(torchrun(root, [*tiny, *args]))
        return scenario
    if name == "failing":
        return Scenario(sweep(["trainer.epochs=2", "method.optimizer.lr=0.3,abc"]))
    if name == "killed":
        s = sweep(["trainer.epochs=1000"])
        return Scenario(s, kill=Driver(lambda: kill(s.run_dir("digits"))))
    if name == "reproduce":
        output = root / name / "analysis"
        args = ["experiment=demo", "seed=0", "method=simclr,simsiam", "trainer.epochs=2"]
        args += [f"output={output}", "analysis.bootstrap.n_resamples=50"]
        args += ["analysis.figures.formats=[png]"]
        return Scenario(sweep(args, module="labelfree.reproduce"))
    raise ValueError(name)


#: The scenarios each test checks: the campaign starts those of the selected tests only.
NEEDS = {
    "test_sweep_is_one_array_job_of_four_completed_tasks": ("main",),
    "test_preempted_job_is_requeued_and_resumes_exactly": ("preempt",),
    "test_time_limit_requeues_and_the_run_completes": ("time_limit", "preempt"),
    "test_job_out_of_time_limit_requeues_fails_and_is_reported": ("time_limit",),
    "test_failing_job_does_not_stop_its_siblings": ("failing",),
    "test_killed_job_is_reported_killed": ("killed",),
    "test_ddp_job_matches_torchrun_and_survives_a_preemption": ("ddp",),
    "test_reproduce_runs_the_demo_on_slurm": ("reproduce",),
}
#: Started first: the longest.
ORDER = ("time_limit", "ddp", "preempt", "killed", "main", "failing", "reproduce")


@pytest.fixture(scope="module")
def campaign(request, slurm_scheduler, tmp_path_factory, tiny_overrides) -> dict[str, Scenario]:
    """Start the scenarios of the selected tests of this module, all at once; cancel at the end."""
    selected = {
        name
        for item in request.session.items
        if item.module is request.module
        for name in NEEDS[item.originalname]
    }
    root = tmp_path_factory.mktemp("slurm")
    tiny = [a for a in tiny_overrides if not a.startswith("trainer.epochs=")]
    scenarios: dict[str, Scenario] = {}
    try:
        for name in (n for n in ORDER if n in selected):
            scenarios[name] = _start(name, root, tiny)
            if name in ("time_limit", "ddp"):  # the longest: let them submit before the rest
                wait_until(scenarios[name].sweep.job_ids, WAIT_S, f"sweep {name} to submit", 0.5)
        yield scenarios
    finally:
        for scenario in scenarios.values():
            scenario.sweep.stop()
            for proc in scenario.extra:
                proc.kill()


def submitit_logs(sweep_dir: Path, job: str) -> str:
    """Everything submitit's tasks of ``job`` (``123_0``) wrote, over all their allocations."""
    return "".join(
        p.read_text(errors="replace") for p in sweep_dir.glob(f".submitit/{job}/*_log.*")
    )


def array_id(sweep: Sweep) -> str:
    (job,) = sweep.job_ids()  # one sweep, one array job
    return job


# --- the tests ----------------------------------------------------------------------------------


def test_sweep_is_one_array_job_of_four_completed_tasks(campaign):
    """method=simclr,simsiam x seed=0,1: one sbatch array of 4 tasks, all COMPLETED, 4 runs."""
    sweep = campaign["main"].sweep
    rc, out = sweep.wait()
    assert rc == 0, out[-3000:]
    job = array_id(sweep)
    tasks = wait_until(lambda: finished(sacct_tasks(job), 4), 60, "sacct: 4 tasks ended")
    assert tasks == {f"{job}_{i}": "COMPLETED" for i in range(4)}
    runs = sorted(p.parent for p in sweep.sweep_dir().glob("*/run.json"))
    assert [read_status(r)["name"].split("-arch")[0] for r in runs] == [
        f"digits-small_cnn-{m}-s{s}" for m in ("simclr", "simsiam") for s in (0, 1)
    ]
    for run in runs:
        status = read_status(run)
        assert status["status"] == "completed", status
        assert status["slurm_job_id"] in tasks
        assert status["slurm_restart_count"] == 0
        assert [r["epoch"] for r in read_jsonl(run / "metrics.jsonl")] == [0, 1, 2]
        assert status["cpu_threads"] == 1  # a 1-CPU task: 1 thread, not one per core
    summary = json.loads((sweep.sweep_dir() / "sweep_summary.json").read_text())
    assert summary["counts"] == {"completed": 4}
    assert "Sweep done: 4 of 4 job(s) completed" in out


def test_preempted_job_is_requeued_and_resumes_exactly(campaign, wandb_run_files):
    """scancel --signal=USR2 mid-training: submitit requeues the job (same id, restart 1), which
    resumes from last.pt into the same run directory and W&B run; its records equal those of
    the uninterrupted twin of the same sweep, and W&B has every one of them."""
    from labelfree.analysis.wandb_source import records_from_history

    scenario = campaign["preempt"]
    signalled = scenario.drivers["preempt"].result()
    rc, out = scenario.sweep.wait()
    assert rc == 0, out[-3000:]
    sweep_dir = scenario.sweep.sweep_dir()
    run, reference = sweep_dir / "preempted", sweep_dir / "reference"
    final = read_status(run)
    job = final["slurm_job_id"]
    assert final["status"] == "completed", final
    assert job == signalled["slurm_job_id"]  # the same job ...
    assert final["slurm_restart_count"] == 1  # ... requeued once (SLURM_RESTART_COUNT)
    assert final["pid"] != signalled["pid"]
    assert scontrol_job(job).get("Restarts", "1") == "1"  # while the controller knows the job
    assert sacct_history(job) == ["REQUEUED", "COMPLETED"]
    logs = submitit_logs(sweep_dir, job)
    assert "this job is preempted" in logs  # a preemption, not a time limit
    assert "Traceback" not in logs, logs[-3000:]  # W&B's service was stopped before SIGTERM
    assert f"Requeued job {job}" in logs
    train_log = (run / "train.log").read_text()
    assert "Preemption signal: closing the logger before submitit requeues the job" in train_log
    assert re.search(r"Resumed from .*last\.pt at epoch [1-9]", train_log)
    assert "W&B failed" not in train_log
    assert "could not be closed" not in train_log

    records = read_jsonl(run / "metrics.jsonl")
    assert [r["epoch"] for r in records] == list(range(11))  # nothing lost, nothing twice
    assert strip_timing(records) == strip_timing(read_jsonl(reference / "metrics.jsonl"))

    # the same W&B run, two offline segments, every record of metrics.jsonl in its history
    assert final["wandb_id"] == signalled["wandb_id"]
    segments = sorted((run / "wandb").glob(f"offline-run-*-{final['wandb_id']}"))
    assert len(segments) == 2, segments
    rows, _config, ids = wandb_run_files(segments)
    assert ids == {final["wandb_id"]}
    assert records_from_history(rows) == records
    summary = json.loads((sweep_dir / "sweep_summary.json").read_text())
    assert summary["counts"] == {"completed": 2}


def test_time_limit_requeues_and_the_run_completes(campaign):
    """The allocation ends by its time limit: SLURM sends USR2 (--signal=USR2@120, the default
    signal_delay_s) before; submitit counts it as a time limit (timeout_min=5 < 10: every USR2
    is) and requeues the job, which completes with the records of the uninterrupted run."""
    scenario = campaign["time_limit"]
    (signal_at,) = scenario.drivers["complete"].result(timeout_s=WAIT_S + 120)
    # slurmctld checks time limits every 30 s: the USR2 comes at the first check that finds the
    # end within signal_delay_s (120) + 30 s, i.e. the next one here; the end is >= 30 s later
    assert signal_at["after_s"] <= 35, signal_at
    assert signal_at["left_s"] >= 25, signal_at
    run = scenario.sweep.sweep_dir() / "job0"
    final = wait_until(
        lambda: (s := read_status(run)).get("status") not in (None, "running") and s, 120, "job0"
    )
    job = final["slurm_job_id"]
    assert final["status"] == "completed", final
    assert final["slurm_restart_count"] == 1
    assert sacct_history(job) == ["REQUEUED", "COMPLETED"]
    logs = submitit_logs(scenario.sweep.sweep_dir(), job)
    assert "this job is timed-out" in logs
    assert f"Requeued job {job} (0 remaining timeouts)" in logs
    reference = campaign["preempt"].sweep.sweep_dir() / "reference" / "metrics.jsonl"
    wait_until(lambda: read_status(reference.parent).get("status") == "completed", WAIT_S, "ref")
    records = read_jsonl(run / "metrics.jsonl")
    assert strip_timing(records) == strip_timing(read_jsonl(reference))


def test_job_out_of_time_limit_requeues_fails_and_is_reported(campaign):
    """max_num_timeout=1: the job that never finishes is requeued once at its time limit; at the
    second, submitit gives up; run.json says failed with submitit's reason, and the summary
    names the job."""
    scenario = campaign["time_limit"]
    signals = scenario.drivers["out_of_requeues"].result(timeout_s=WAIT_S + 120)
    assert len(signals) == 2, signals
    assert all(s["after_s"] <= 35 and s["left_s"] >= 25 for s in signals), signals
    rc, out = scenario.sweep.wait(timeout_s=WAIT_S + 180)
    assert rc == 0, out[-3000:]
    run = scenario.sweep.sweep_dir() / "job1"
    final = read_status(run)
    reason = "Job not requeued because: timed-out too many times."
    assert final["status"] == "failed", final
    assert final["error"] == reason
    assert final["slurm_restart_count"] == 1
    assert sacct_history(final["slurm_job_id"]) == ["REQUEUED", "COMPLETED"]
    assert 1 <= final["last_epoch"] < 1000
    assert (run / "train.log").read_text().count("Resumed from") == 1  # the second allocation
    logs = submitit_logs(scenario.sweep.sweep_dir(), final["slurm_job_id"])
    # (submitit writes its warnings to stdout and stderr: count distinct events, by time stamp)
    assert len(set(re.findall(r"submitit WARNING \((.*?)\) .* this job is timed-out", logs))) == 2
    assert len(set(re.findall(r"submitit INFO \((.*?)\) - Requeued job", logs))) == 1
    md = (scenario.sweep.sweep_dir() / "sweep_summary.md").read_text()
    (row,) = [line for line in md.splitlines() if "trainer.epochs=1000" in line]
    assert "| failed |" in row
    assert reason in row
    assert f"failed: {reason}" in out


def test_failing_job_does_not_stop_its_siblings(campaign):
    """lr=abc fails at start-up; its sibling completes; the summary names it and its error."""
    sweep = campaign["failing"].sweep
    rc, out = sweep.wait()
    assert rc == 0, out[-3000:]
    job = array_id(sweep)
    tasks = wait_until(lambda: finished(sacct_tasks(job), 2), 60, "sacct")
    assert tasks == {f"{job}_0": "COMPLETED", f"{job}_1": "COMPLETED"}
    summary = json.loads((sweep.sweep_dir() / "sweep_summary.json").read_text())
    assert summary["counts"] == {"completed": 1, "failed": 1}
    (failed,) = summary["not_completed"]
    error = "method.optimizer.lr='abc' must be a positive number"
    assert failed["error"].startswith(error)
    assert "\n" not in failed["error"]
    assert "method.optimizer.lr=abc" in failed["overrides"]
    md = (sweep.sweep_dir() / "sweep_summary.md").read_text()
    assert any("| failed |" in line and error in line for line in md.splitlines()), md
    assert "Sweep done: 1 of 2 job(s) completed" in out


def test_killed_job_is_reported_killed(campaign, run_module, tmp_path):
    """scancel of a running task: its run.json still says running, but no process holds the
    run's lock, so the summary reports it killed (the launcher stops at that job's missing result,
    as documented; the summary is then written by hand)."""
    scenario = campaign["killed"]
    killed = scenario.drivers["kill"].result()
    rc, out = scenario.sweep.wait()
    assert rc != 0, out[-3000:]
    assert "UncompletedJobError" in out, out[-3000:]
    assert sacct_history(killed["slurm_job_id"])[-1].startswith("CANCELLED")
    run = scenario.sweep.run_dir("digits")
    assert read_status(run)["status"] == "running"  # what the killed process left
    assert not RunLock.is_held(run)
    proc = run_module("labelfree.sweep.summary", str(scenario.sweep.sweep_dir()), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((scenario.sweep.sweep_dir() / "sweep_summary.json").read_text())
    assert summary["counts"] == {KILLED: 1}
    assert summary["jobs"][0]["error"] == KILLED_ERROR
    assert f"| {KILLED} |" in proc.stdout
    assert KILLED_ERROR in proc.stdout


def test_ddp_job_matches_torchrun_and_survives_a_preemption(campaign):
    """tasks_per_node=2 (gloo, CPU): one run with world size 2, preempted mid-training and
    requeued; its records equal those of `torchrun --nproc_per_node=2` on the same overrides,
    and rank 1 leaves for the requeue without an error."""
    scenario = campaign["ddp"]
    signalled = scenario.drivers["preempt"].result()
    rc, out = scenario.sweep.wait()
    assert rc == 0, out[-3000:]
    (torchrun_proc,) = scenario.extra
    assert torchrun_proc.wait(timeout=WAIT_S) == 0, (scenario.sweep.dir.parent / "torchrun").name
    run = scenario.sweep.run_dir("digits")
    final = read_status(run)
    assert final["status"] == "completed", final
    assert final["world_size"] == 2
    assert final["slurm_restart_count"] == 1
    assert final["slurm_job_id"] == signalled["slurm_job_id"]
    torchrun_run = scenario.sweep.dir.parent / "torchrun" / "run"
    assert read_status(torchrun_run)["world_size"] == 2
    records = read_jsonl(run / "metrics.jsonl")
    assert [r["epoch"] for r in records] == list(range(11))
    assert strip_timing(records) == strip_timing(read_jsonl(torchrun_run / "metrics.jsonl"))
    job = final["slurm_job_id"]
    folder = scenario.sweep.sweep_dir() / ".submitit" / job
    rank1 = "".join(p.read_text(errors="replace") for p in folder.glob(f"{job}_1_log.*"))
    assert "Rank 1: rank 0 left after the preemption signal" in rank1
    assert "[ERROR]" not in rank1, rank1[-3000:]
    assert "Traceback" not in rank1, rank1[-3000:]
    assert "[ERROR]" not in submitit_logs(scenario.sweep.sweep_dir(), job)


def test_reproduce_runs_the_demo_on_slurm(campaign):
    """labelfree-reproduce experiment=demo hydra/launcher=slurm: the sweep as one array job of
    2 tasks on the scheduler, then the analysis of both runs."""
    sweep = campaign["reproduce"].sweep
    rc, out = sweep.wait()
    assert rc == 0, out[-3000:]
    assert "Runs of experiment demo: 2 completed" in out, out[-3000:]
    assert "| simclr |" in out
    assert "| simsiam |" in out
    (job,) = job_ids(sweep.sweep_dir("demo"))
    tasks = wait_until(lambda: finished(sacct_tasks(job), 2), 60, "sacct")
    assert tasks == {f"{job}_0": "COMPLETED", f"{job}_1": "COMPLETED"}
    analysis = sweep.dir / "analysis"
    for name in ("main_table.md", "summary.md", "runs.csv", "correlations.csv"):
        assert (analysis / name).stat().st_size > 0, name
    assert list((analysis / "figures").glob("*.png"))
