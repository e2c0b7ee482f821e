"""The ``slurm_cluster`` fixture: a real SLURM scheduler answering on this machine, or a skip."""

from __future__ import annotations

import shutil
import subprocess

import pytest

START = "bash scripts/slurm_cluster.sh start"


def _node_states() -> tuple[set[str], str]:
    """``(states of the nodes, why there are none)`` as sinfo reports them."""
    if shutil.which("sinfo") is None:
        return set(), "sinfo is not installed"
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, timeout=15
        )
    except subprocess.TimeoutExpired:
        return set(), "sinfo did not answer within 15 s"
    if out.returncode != 0:
        return set(), f"sinfo failed: {out.stderr.strip()[-300:]}"
    return set(out.stdout.split()), ""


class Cluster:
    """Submits through the real client commands and cancels what a test leaves behind."""

    def __init__(self) -> None:
        self.job_ids: list[str] = []

    def track(self, job_id: str) -> str:
        """Remember a job (``123`` or an array's ``123``) to cancel at teardown."""
        self.job_ids.append(str(job_id).split("_")[0])
        return job_id

    def sbatch(self, *args: str) -> str:
        out = subprocess.run(
            ["sbatch", "--parsable", *args], capture_output=True, text=True, check=True
        )
        return self.track(out.stdout.strip().split(";")[0])

    def cancel_all(self) -> None:
        if self.job_ids:
            subprocess.run(["scancel", *self.job_ids], capture_output=True, check=False)


@pytest.fixture(scope="session")
def _slurm_node_states() -> tuple[set[str], str]:
    # Asked once: without a controller sinfo retries for ~10 s before it fails.
    return _node_states()


@pytest.fixture(scope="session")
def slurm_scheduler(_slurm_node_states) -> None:
    """Skip unless a scheduler answers with an idle or mixed node."""
    states, why = _slurm_node_states
    if not states & {"idle", "mixed"}:
        reason = why or f"no idle/mixed SLURM node (sinfo says: {sorted(states) or 'none'})"
        pytest.skip(f"{reason}; start the one-node test cluster with `{START}`")


@pytest.fixture
def slurm_cluster(slurm_scheduler):
    """A scheduler whose node is idle or mixed (else skip); cancels the test's jobs afterwards."""
    cluster = Cluster()
    yield cluster
    cluster.cancel_all()
