"""build: the view-path rule behind trainer.augmentation=auto, workers, CPU threads, compile,
config checks."""

import json
import os
import subprocess
import sys

import pytest
import torch

from labelfree import build
from labelfree.build import (
    LIGHTLY_MIN_WORKERS,
    choose_augmentation,
    cpus_per_process,
    resolve_augmentation,
    resolve_num_workers,
    validate_config,
)
from labelfree.config import config_hash
from labelfree.rundir import RunDir
from labelfree.train import train

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize(
    ("device_type", "workers", "expected"),
    [
        ("cuda", 15, "lightly"),  # a 16-core GPU node: PIL workers outrun our launch-bound views
        ("cuda", LIGHTLY_MIN_WORKERS, "lightly"),
        ("cuda", LIGHTLY_MIN_WORKERS - 1, "batched"),
        ("cuda", 0, "batched"),
        ("cpu", 1, "batched"),  # this 2-core machine
        ("cpu", 63, "batched"),  # on a CPU the workers take the training step's cores
    ],
)
def test_auto_rule(device_type, workers, expected):
    assert choose_augmentation(device_type, workers=workers) == expected


def test_auto_workers_leave_a_core_to_training_and_share_a_node(monkeypatch):
    assert resolve_num_workers("auto", cores=16) == 15
    assert resolve_num_workers("auto", cores=64) == 16  # capped
    assert resolve_num_workers("auto", cores=1) == 0
    assert resolve_num_workers(3, cores=1) == 3
    monkeypatch.setattr(build.os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun: 4 ranks share the node's 16 cores
    assert cpus_per_process() == 4
    assert resolve_num_workers("auto") == 3


def test_a_slurm_task_gets_at_most_its_cpus_per_task(monkeypatch):
    monkeypatch.setattr(build.os, "sched_getaffinity", lambda pid: set(range(16)))
    # task/none (no binding): the task sees the node's 16 cores, it was given 2
    assert cpus_per_process({"SLURM_CPUS_PER_TASK": "2", "LOCAL_WORLD_SIZE": "2"}) == 2
    monkeypatch.setattr(build.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    # task/affinity: the mask already is the task's; LOCAL_WORLD_SIZE does not divide it again
    assert cpus_per_process({"SLURM_CPUS_PER_TASK": "4", "LOCAL_WORLD_SIZE": "2"}) == 4
    assert cpus_per_process({"SLURM_CPUS_PER_TASK": "8"}) == 4  # never more than the mask


def test_auto_keeps_the_view_path_of_a_saved_run():
    lightly_run = {"trainer": {"augmentation": "lightly"}}
    assert resolve_augmentation("auto", CPU, workers=1, saved=lightly_run) == "lightly"
    assert resolve_augmentation("auto", CUDA, workers=15, saved={"trainer": {}}) == "lightly"
    assert resolve_augmentation("auto", CPU, workers=1, saved=None) == "batched"
    # an explicit value is what the launch asks for: the resume diff refuses a different path
    assert resolve_augmentation("batched", CUDA, workers=15, saved=lightly_run) == "batched"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.augmentation=gpu", "trainer.augmentation=gpu is not one of: auto, batched"),
        ("trainer.num_workers=-1", "trainer.num_workers=-1 must be auto or an integer >= 0"),
        ("trainer.compile=yes", "trainer.compile=yes must be true or false"),
        ("trainer.cuda_graphs=1", "trainer.cuda_graphs=1 must be true or false"),
    ],
)
def test_bad_trainer_values_are_one_line_errors(compose_train, override, message):
    with pytest.raises(ValueError, match=message) as err:
        validate_config(compose_train(override))
    assert "\n" not in str(err.value)
    assert "set trainer." in str(err.value) or "e.g. trainer." in str(err.value)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def strip(records):
    return [{k: v for k, v in r.items() if k not in ("wall_s", "eval_s")} for r in records]


@pytest.mark.slow
def test_an_auto_run_keeps_its_view_path_when_it_resumes_on_another_machine(
    compose_train, tiny_overrides, tmp_path, monkeypatch
):
    """Started with auto where auto chose lightly (a GPU node), resumed where it chooses batched
    (this CPU): the resumed run keeps lightly and writes the records of an uninterrupted lightly
    run; an explicit other view path is refused, naming the key."""
    args = [*tiny_overrides, "trainer.num_workers=0"]
    train(compose_train(*args, "trainer.augmentation=lightly"), tmp_path / "reference")

    import labelfree.train as train_module

    real_epoch = train_module.train_epoch

    def stop_in_epoch_2(trainer, *, epoch, step):
        if epoch == 2:
            raise KeyboardInterrupt
        return real_epoch(trainer, epoch=epoch, step=step)

    run = tmp_path / "run"
    with monkeypatch.context() as gpu_node:
        gpu_node.setattr(build, "choose_augmentation", lambda device_type, *, workers: "lightly")
        gpu_node.setattr(train_module, "train_epoch", stop_in_epoch_2)
        with pytest.raises(KeyboardInterrupt):
            train(compose_train(*args), run)
    status = RunDir(run).read_status()
    assert (status["status"], status["last_epoch"]) == ("interrupted", 1)
    assert status["config"]["trainer"]["augmentation"] == "lightly"
    assert status["identity"]["resolved"] == {"trainer.augmentation": "lightly"}
    assert choose_augmentation("cpu", workers=0) == "batched"  # what auto picks here

    with pytest.raises(ValueError, match=r"trainer\.augmentation: lightly -> batched"):
        train(compose_train(*args, "trainer.augmentation=batched"), run)

    final = train(compose_train(*args), run)  # auto, on this CPU
    assert final["status"] == "completed"
    assert final["config"]["trainer"]["augmentation"] == "lightly"
    assert final["identity"]["hash"] == config_hash(final["config"])
    assert strip(read_jsonl(run / "metrics.jsonl")) == strip(
        read_jsonl(tmp_path / "reference" / "metrics.jsonl")
    )


@pytest.mark.slow
def test_compiled_model_trains_like_the_eager_one(compose_train, tiny_overrides, tmp_path):
    """trainer.compile (torch.compile of backbone and heads, inductor's C++ backend on a CPU):
    the same losses to rounding, and checkpoints keep the eager parameter names."""
    args = [*tiny_overrides, "trainer.epochs=1", "eval.schedule=[]"]
    eager = train(compose_train(*args), tmp_path / "eager")
    compiled = train(compose_train(*args, "trainer.compile=true"), tmp_path / "compiled")
    assert compiled["status"] == "completed"
    assert compiled["identity"]["hash"] == eager["identity"]["hash"]  # not a result key
    loss = [
        read_jsonl(tmp_path / d / "metrics.jsonl")[-1]["train/loss"] for d in ("eager", "compiled")
    ]
    assert loss[1] == pytest.approx(loss[0], rel=1e-4)
    keys = [
        set(torch.load(tmp_path / d / "checkpoints" / "last.pt", weights_only=True)["model"])
        for d in ("eager", "compiled")
    ]
    assert keys[0] == keys[1]


def test_compile_model_compiles_backbone_and_heads_not_losses(compose_train):
    from labelfree.build import build_model, compile_model

    _, model = build_model(compose_train("method=moco_v2", "arch.widths=[16,32]"))
    compile_model(model)
    compiled = {n for n, m in model.named_children() if m._compiled_call_impl is not None}
    assert compiled == {"backbone", "projector", "backbone_target", "projector_target"}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_runs_with_cuda_graphs_and_with_auto(compose_train, tiny_overrides, tmp_path):
    graphs = train(
        compose_train(*tiny_overrides, "trainer.augmentation=batched", "trainer.cuda_graphs=true"),
        tmp_path / "graphs",
    )
    assert (graphs["status"], graphs["device"][:4]) == ("completed", "cuda")
    auto = train(compose_train(*tiny_overrides), tmp_path / "auto")
    expected = choose_augmentation("cuda", workers=resolve_num_workers("auto"))
    assert auto["config"]["trainer"]["augmentation"] == expected


# One fresh process (thread pools are per process), the cases that change nothing first.
THREADS = """
import json, os, torch
from threadpoolctl import threadpool_info
from labelfree.build import limit_cpu_threads

def state(returned):
    pools = sorted({p["num_threads"] for p in threadpool_info()})
    return {"returned": returned, "torch": torch.get_num_threads(), "pools": pools}

print(json.dumps({
    "outside": state(limit_cpu_threads({})),
    "user's choice": state(limit_cpu_threads({"SLURM_CPUS_PER_TASK": "1", "OMP_NUM_THREADS": "2"})),
    "slurm": state(limit_cpu_threads({"SLURM_CPUS_PER_TASK": "1"})),
}))
"""


@pytest.mark.skipif(os.cpu_count() < 2, reason="needs 2 cores to tell 1 thread from all")
def test_a_slurm_task_uses_the_threads_of_its_allocation():
    """SLURM_CPUS_PER_TASK=1 on a machine with more cores: PyTorch, OpenMP and BLAS use 1
    thread; with OMP_NUM_THREADS set (the user's choice), or outside SLURM, nothing changes."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("SLURM_CPUS_PER_TASK", "OMP_NUM_THREADS")
    }
    out = subprocess.run(
        [sys.executable, "-c", THREADS], env=env, capture_output=True, text=True, check=True
    )
    cases = json.loads(out.stdout.splitlines()[-1])
    cores = os.cpu_count()
    assert cases["outside"] == {"returned": cores, "torch": cores, "pools": [cores]}
    assert cases["user's choice"] == cases["outside"]
    assert cases["slurm"] == {"returned": 1, "torch": 1, "pools": [1]}
