"""conf/hydra/launcher: the SLURM and local launchers compose into what submitit expects."""

import os

from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate


def _launcher(*overrides):
    with initialize_config_module("labelfree.conf", version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg, instantiate(cfg.hydra.launcher)


def test_slurm_launcher_builds_the_expected_sbatch_script(tmp_path, monkeypatch):
    """conf/hydra/launcher/slurm.yaml through the real plugin and submitit's sbatch writer."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    cfg, launcher = _launcher(
        "hydra/launcher=slurm",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.account=lab",
        "hydra.launcher.timeout_min=240",
        f"paths.output_dir={tmp_path}",
    )
    assert type(launcher).__name__ == "SlurmLauncher"  # the plugin Hydra discovered
    params = dict(launcher.params)
    assert params["submitit_folder"] == f"{tmp_path}/sweeps/adhoc/.submitit/%j"
    assert params["gpus_per_node"] == params["tasks_per_node"] == 1  # one GPU per task
    assert params["max_num_timeout"] > 0  # time limits requeue (preemptions always do)
    # submitit refuses to build a SLURM executor without srun on PATH: a stand-in that is never run
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 1\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    # the parameter translation of BaseSubmititLauncher.launch, then submitit's own sbatch text
    executor = submitit.AutoExecutor(
        folder=params.pop("submitit_folder"),
        cluster="slurm",
        slurm_max_num_timeout=params.pop("max_num_timeout"),
    )
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    sbatch = executor._executor._make_submission_file_text("labelfree-train", "uid")
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --account=lab",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=32GB",
        "#SBATCH --time=240",
        "#SBATCH --signal=USR2@120",
        f"#SBATCH --output={tmp_path}/sweeps/adhoc/.submitit/%j/%j_0_log.out",
    ):
        assert line in sbatch, sbatch
    assert executor._executor.max_num_timeout == 20

    _, ddp = _launcher("hydra/launcher=slurm", "hydra.launcher.tasks_per_node=4")
    assert ddp.params["gpus_per_node"] == 4  # DDP: one GPU per task follows tasks_per_node


def test_local_launcher_config():
    _, launcher = _launcher("hydra/launcher=local")
    assert type(launcher).__name__ == "LocalLauncher"
    assert launcher.params["submitit_folder"].endswith("sweeps/adhoc/.submitit/%j")
    assert launcher.params["timeout_min"] >= 24 * 60
