"""Every experiment config composes, as a job and as a sweep, and says what the brief asks."""

import json
from functools import partial
from importlib import resources

import pytest
from omegaconf import OmegaConf

from labelfree.build import choose_augmentation
from labelfree.evaluation import eval_epochs
from labelfree.sweep.plan import list_experiments, plan_sweep

EXPERIMENTS = [
    "cifar10_cpu",
    "cifar10_gpu",
    "cross_arch",
    "demo",
    "hparams_cpu",
    "paper_cifar10",
    "paper_cifar100",
]
PAPER_METHODS = {"simsiam", "simclr", "moco_v2"}


@pytest.fixture(scope="module")
def plans(tmp_path_factory):
    """Each experiment's sweep expanded once (composing every job is the slow part)."""
    root = tmp_path_factory.mktemp("outputs")
    return root, {name: plan_sweep(name, [f"paths.output_dir={root}"]) for name in EXPERIMENTS}


def experiment_text(name):
    return (resources.files("labelfree.conf") / "experiment" / f"{name}.yaml").read_text()


def test_the_shipped_experiments_are_listed():
    assert list_experiments() == EXPERIMENTS


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_file_is_a_global_bundle_headed_by_its_command(name):
    lines = experiment_text(name).splitlines()
    assert lines[0] == "# @package _global_"
    header = [line for line in lines if line.startswith("#")]
    assert any("labelfree-reproduce" in line for line in header), header
    assert any(f"labelfree-train -m experiment={name}" in line for line in header), header
    assert all(len(line) <= 100 for line in lines)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_as_a_job(compose_train, name):
    cfg = compose_train(f"experiment={name}")
    assert cfg.experiment_name == name
    OmegaConf.resolve(cfg)  # every interpolation resolves
    epochs = eval_epochs(cfg.eval.schedule, cfg.trainer.epochs)
    assert epochs[0] == 0
    assert epochs[-1] == cfg.trainer.epochs


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_job_of_the_sweep_composes_into_its_own_run_dir(name, plans):
    root, plans = plans
    plan = plans[name]
    assert plan.sweep_dir == root / "sweeps" / name
    assert len(set(plan.run_dirs)) == len(plan.jobs) > 1
    assert all(d.parent == plan.sweep_dir for d in plan.run_dirs)


def test_demo_sweep(compose_train, plans):
    plan = plans[1]["demo"]
    assert plan.sweep_keys == {"method": "simclr,moco_v2,simsiam", "seed": "0,1"}
    assert sorted(d.name for d in plan.run_dirs) == sorted(
        f"digits-small_cnn-{m}-s{s}" for m in ("simclr", "moco_v2", "simsiam") for s in (0, 1)
    )
    cfg = compose_train("experiment=demo", "method=simsiam")
    assert cfg.data.name == "digits"
    assert cfg.metrics.name == "full"
    # dense evaluations: every epoch
    assert eval_epochs(cfg.eval.schedule, cfg.trainer.epochs) == list(range(cfg.trainer.epochs + 1))


@pytest.mark.parametrize(
    ("name", "dataset"), [("paper_cifar10", "cifar10"), ("paper_cifar100", "cifar100")]
)
def test_paper_sweeps_follow_the_paper(compose_train, name, dataset, plans):
    plan = plans[1][name]
    assert len(plan.jobs) == 9
    assert {d.name.rsplit("-", 2)[1] for d in plan.run_dirs} == PAPER_METHODS
    assert {d.name.rsplit("-", 1)[1] for d in plan.run_dirs} == {"s0", "s1", "s2"}
    for method in PAPER_METHODS:
        cfg = compose_train(f"experiment={name}", f"method={method}")
        assert (cfg.data.name, cfg.arch.name, cfg.metrics.name) == (
            dataset,
            "resnet18_cifar",
            "paper",
        )
        assert (cfg.trainer.epochs, cfg.trainer.batch_size) == (1000, 512)
        assert eval_epochs(cfg.eval.schedule, cfg.trainer.epochs) == list(range(0, 1001, 20))
        assert cfg.data.download is False  # documented one-time download step instead


def test_cifar10_gpu_is_the_full_dataset_at_scale_on_one_gpu(compose_train, plans):
    plan = plans[1]["cifar10_gpu"]
    assert {d.name.rsplit("-", 2)[1] for d in plan.run_dirs} == PAPER_METHODS
    assert plan.launcher.startswith("LocalLauncher")  # the 3 runs at once on the one GPU
    cfg = compose_train("experiment=cifar10_gpu")
    assert (cfg.data.loader, cfg.arch.name, cfg.metrics.name) == (
        "imagefolder",
        "resnet18_cifar",
        "full",
    )
    # the whole of CIFAR-10: 50,000 train (SSL and probe), 10,000 test (every metric)
    assert cfg.data.train_per_class is None
    assert cfg.data.test_per_class is None
    assert cfg.eval.train_per_class is None
    epochs = eval_epochs(cfg.eval.schedule, cfg.trainer.epochs)
    assert epochs[:3] == [0, 1, 2]
    assert len(epochs) == 8
    assert cfg.trainer.augmentation == "auto"
    assert choose_augmentation("cuda", workers=cfg.trainer.num_workers) == "batched"


def test_cross_arch_varies_the_architecture_with_one_method(plans):
    plan = plans[1]["cross_arch"]
    archs = {d.name.split("-")[1] for d in plan.run_dirs}
    methods = {d.name.split("-")[2] for d in plan.run_dirs}
    assert len(archs) >= 3
    assert {"small_cnn", "resnet18_cifar", "vit_tiny"} <= archs
    assert methods == {"simclr"}


def test_hparams_sweep_crosses_two_keys_with_two_methods_and_two_seeds(compose_train, plans):
    plan = plans[1]["hparams_cpu"]
    assert plan.sweep_keys == {
        "method": "simclr,byol",
        "method.optimizer.lr": "0.03,0.3",
        "data.augment.min_scale": "0.08,0.5",
        "seed": "0,1",
    }
    assert len(plan.jobs) == 16
    assert {d.name.split("-")[3] for d in plan.run_dirs} == {"simclr", "byol"}
    names = {d.name for d in plan.run_dirs}
    assert (
        "cifar10-jpeg-small_cnn-byol-s1-data.augment.min_scale=0.5,method.optimizer.lr=0.03"
        in names
    )
    cfg = compose_train("experiment=hparams_cpu", "method=byol", "method.optimizer.lr=0.03")
    assert (cfg.data.loader, cfg.arch.name, cfg.metrics.name) == (
        "imagefolder",
        "small_cnn",
        "full",
    )
    assert cfg.method.optimizer.lr == 0.03
    assert eval_epochs(cfg.eval.schedule, cfg.trainer.epochs) == list(range(11))


def test_command_line_sweep_values_replace_the_experiments(tmp_path):
    plan = plan_sweep("demo", [f"paths.output_dir={tmp_path}", "seed=5", "method=simclr,byol"])
    assert [d.name for d in plan.run_dirs] == [
        "digits-small_cnn-simclr-s5",
        "digits-small_cnn-byol-s5",
    ]
    assert plan.sweep_keys == {"method": "simclr,byol"}


def test_a_sweep_over_any_result_key_gives_each_job_its_own_run_dir(tmp_path):
    plan = plan_sweep(
        "demo", [f"paths.output_dir={tmp_path}", "seed=0", "trainer.batch_size=64,128"]
    )
    names = {d.name for d in plan.run_dirs}
    assert "digits-small_cnn-simclr-s0-trainer.batch_size=64" in names
    assert len(names) == len(plan.jobs) == 6


def test_sweep_over_a_key_that_cannot_change_results_is_refused(tmp_path):
    with pytest.raises(ValueError, match="would share the run directory"):
        plan_sweep("demo", [f"paths.output_dir={tmp_path}", "seed=0", "trainer.num_workers=1,2"])


def test_bad_override_fails_before_training(train_cli, tmp_path):
    with pytest.raises(ValueError, match="trainer.epoch"):
        plan_sweep("demo", [f"paths.output_dir={tmp_path}", "trainer.epoch=3"])


@pytest.fixture
def train_cli(run_module):
    return partial(run_module, "labelfree.train")


def test_cfg_job_prints_the_experiment(train_cli, tmp_path):
    proc = train_cli("experiment=demo", "--cfg", "job", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    cfg = OmegaConf.create(proc.stdout)
    assert cfg.experiment_name == "demo"
    assert cfg.eval.schedule == "every:1"


@pytest.mark.slow
def test_multirun_over_every_experiment_file(train_cli, tmp_path):
    """LHT's `-m experiment=glob(*)`: each file composes through the real multirun path.

    `trainer.epochs=0` stops every job at the first check of `train` (before any data is loaded):
    Hydra composes the job, train marks it failed with the epochs message, the sweep goes on.
    """
    proc = train_cli(
        "-m",
        "experiment=glob(*)",
        "trainer.epochs=0",
        f"paths.output_dir={tmp_path}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    statuses = {}
    for run_json in (tmp_path / "sweeps").glob("*/*/run.json"):
        statuses[run_json.parent.parent.name] = json.loads(run_json.read_text())
    assert sorted(statuses) == EXPERIMENTS
    for status in statuses.values():
        assert status["status"] == "failed"
        assert "trainer.epochs=0" in status["error"]
