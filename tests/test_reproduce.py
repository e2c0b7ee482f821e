"""labelfree-reproduce: argument handling, failed-run reporting, and the demo end to end (tiny)."""

import doctest
import json
from functools import partial

import pandas as pd
import pytest

import labelfree.reproduce
from labelfree.reproduce import main, parse_arguments, reproduce
from labelfree.sweep.plan import plan_sweep

TINY = ["seed=0", "method=simclr,simsiam", "trainer.epochs=2", "trainer.warmup_epochs=1"]
FAST_ANALYSIS = ["bootstrap.n_resamples=50", "figures.formats=[png]"]


def test_doctests():
    failures, tried = doctest.testmod(labelfree.reproduce)
    assert tried >= 4
    assert failures == 0


def test_arguments_are_split_between_sweep_analysis_and_own_keys():
    args = parse_arguments(
        [
            "experiment=paper_cifar10",
            "output=out",
            "train=false",
            "seed=0",
            "analysis.table.digits=3",
        ]
    )
    assert (args.experiment, args.output, args.train) == ("paper_cifar10", "out", False)
    assert args.train_overrides == ["seed=0"]
    assert args.analysis_overrides == ["table.digits=3"]
    assert parse_arguments([]).experiment == "demo"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["experiment=nope"],
            "Unknown experiment 'nope'. Choose one of: cifar10_cpu, cifar10_gpu, cross_arch, demo, "
            "hparams_cpu, paper_cifar10, paper_cifar100 (files of conf/experiment/).",
        ),
        (["--cfg"], "is not key=value"),
        (["train=maybe"], "train=maybe is not a boolean"),
    ],
)
def test_bad_arguments_are_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 1
    assert message in capsys.readouterr().err


def write_run(run_dir, *, method, status, epochs=6, error=None, slope=1.0, gain=0.05, config=None):
    """A synthetic run directory: the metrics are exact functions of the probe accuracy, which
    is ``0.5 + gain * epoch``; ``config`` is the run's saved config (run.json)."""
    run_dir.mkdir(parents=True)
    info = {
        "name": run_dir.name,
        "method": method,
        "arch": "small_cnn",
        "data": "digits",
        "seed": 0,
        "experiment": "demo",
        "status": status,
        "epochs": epochs,
        "last_epoch": epochs if status == "completed" else 1,
        "error": error,
    }
    if config is not None:
        info["config"] = config
    (run_dir / "run.json").write_text(json.dumps(info))
    lines = []
    for epoch in range(epochs + 1):
        acc = 0.5 + gain * epoch
        record = {
            "epoch": epoch,
            "step": 10 * epoch,
            "lf/silhouette": slope * acc,
            "lf/kmeans_agreement": acc**2,
            "lf/entropy": 9.0 - acc,
            "lf/uniformity": acc,  # lower is better: picks the worse run, the first epoch
            "sup/kmeans_gt_ami": acc / 2,
            "sup/linear_probe_acc": acc,
        }
        lines.append(json.dumps(record))
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def test_failed_and_missing_runs_are_reported_and_the_rest_analysed(tmp_path, capsys):
    overrides = [f"paths.output_dir={tmp_path}", "seed=0", "method=simclr,moco_v2,simsiam"]
    plan = plan_sweep("demo", overrides)
    simclr, moco, simsiam = plan.run_dirs
    write_run(simclr, method="simclr", status="completed")
    write_run(simsiam, method="simsiam", status="failed", error="ValueError: boom")
    output = tmp_path / "out"

    result = reproduce(
        "demo", overrides, output=output, train=False, analysis_overrides=FAST_ANALYSIS
    )

    assert result.returncode is None
    assert [(r.name, r.status) for r in result.runs] == [
        (simclr.name, "completed"),
        (moco.name, "missing"),
        (simsiam.name, "failed"),
    ]
    assert result.runs[2].error == "ValueError: boom"
    runs = pd.read_csv(output / "runs.csv")
    assert set(runs["method"]) == {"simclr"}
    assert len(runs) == 7
    correlations = pd.read_csv(output / "correlations.csv")
    exact = correlations[
        (correlations["method"] == "simclr")
        & (correlations["variant"] == "all")
        & (correlations["coefficient"] == "spearman")
        & (correlations["target"] == "sup/linear_probe_acc")
        & (correlations["aggregate"] == "per_seed")
    ].set_index("metric")["value"]
    assert exact["lf/silhouette"] == pytest.approx(1.0)
    assert exact["lf/entropy"] == pytest.approx(-1.0)
    text = result.main_table.read_text()
    assert "1 completed, 1 failed, 1 missing" in text
    assert f"| {simsiam.name} | failed | 1/6 | ValueError: boom |" in text
    assert "| simclr |" in text
    assert (output / "reproduce.log").read_text().count("is failed: ValueError: boom") == 1


def test_model_selection_is_printed_after_the_main_table(tmp_path, capsys):
    """A temperature sweep read back (train=false): grouped rows, then the selection, by hand."""
    overrides = [f"paths.output_dir={tmp_path}", "seed=0", "method=simclr"]
    overrides.append("method.temperature=0.2,0.5")
    plan = plan_sweep("demo", overrides)
    # final probe accuracy 0.80 at temperature 0.2, 0.74 at 0.5 (6 epochs, 0.05 or 0.04 a step)
    for run_dir, temperature, gain in zip(plan.run_dirs, (0.2, 0.5), (0.05, 0.04), strict=True):
        config = {"seed": 0, "method": {"name": "simclr", "temperature": temperature}}
        write_run(run_dir, method="simclr", status="completed", gain=gain, config=config)
    output = tmp_path / "out"
    fast = ["bootstrap.n_resamples=50", "figures.enabled=false"]
    result = reproduce("demo", overrides, output=output, train=False, analysis_overrides=fast)
    assert result.analysis.group_keys == ["method.temperature"]

    selection = pd.read_csv(output / "model_selection.csv", dtype={"method.temperature": str})
    runs = selection[selection["kind"] == "run"].set_index("selector")
    assert set(runs["method"]) == {"all"}
    assert set(runs["n_runs"]) == {2}
    assert runs.loc["lf/silhouette", "pick"] == "simclr, method.temperature=0.2, s0"
    assert runs.loc["lf/silhouette", "regret"] == pytest.approx(0.0)
    assert runs.loc["lf/uniformity", "pick"] == "simclr, method.temperature=0.5, s0"
    assert runs.loc["lf/uniformity", "regret"] == pytest.approx(0.80 - 0.74)
    assert runs.loc["lf/uniformity", "random_regret"] == pytest.approx(0.80 - (0.80 + 0.74) / 2)
    assert runs.loc["lf/entropy", "direction"] == "none"
    assert pd.isna(runs.loc["lf/entropy", "pick"])  # nothing picked (empty in the CSV)
    checkpoints = selection[selection["aggregate"] == "mean"].set_index("selector")
    # uniformity stops at epoch 0 (0.5) in both runs: 0.30 and 0.24 points below their best
    assert checkpoints.loc["lf/uniformity", "pick_epoch"] == pytest.approx(0.0)
    assert checkpoints.loc["lf/uniformity", "regret"] == pytest.approx((0.30 + 0.24) / 2)
    assert checkpoints.loc["lf/silhouette", "pick_epoch"] == pytest.approx(6.0)
    assert checkpoints.loc["lf/silhouette", "last_regret"] == pytest.approx(0.0)
    per_run = selection[selection["aggregate"] == "per_run"]
    assert sorted(per_run["method.temperature"].unique()) == ["0.2", "0.5"]

    labelfree.reproduce.print_summary(result)
    printed = capsys.readouterr().out
    main = printed.index("## digits / small_cnn")
    chosen = printed.index("## Model selection: digits / small_cnn")
    assert main < printed.index("| simclr, method.temperature=0.2 |") < chosen
    assert chosen < printed.index("### Choosing a run: all runs (digits / small_cnn)")
    assert chosen < printed.index("### Choosing a checkpoint (digits / small_cnn)")
    assert chosen < printed.index("Outputs in")
    assert "model_selection.{csv,md,tex}" in printed
    assert "| Uniformity | lower | simclr, method.temperature=0.5, s0 | 74.0 | 6.0 |" in printed
    assert "| random pick (expected) |  |  | 77.0 | 3.0 |" in printed
    text = result.main_table.read_text()
    assert text.index("## digits / small_cnn") < text.index("## Model selection: digits")


def test_no_run_directory_is_an_error(reproduce_cli, tmp_path):
    with pytest.raises(ValueError, match="train=false: run the sweep first"):
        reproduce("demo", [f"paths.output_dir={tmp_path}"], output=tmp_path / "o", train=False)


@pytest.fixture
def reproduce_cli(run_module):
    return partial(run_module, "labelfree.reproduce", timeout=600)


@pytest.mark.slow
def test_tiny_demo_end_to_end_then_resumed(reproduce_cli, tmp_path):
    args = [
        *TINY,
        f"paths.output_dir={tmp_path / 'outputs'}",
        f"output={tmp_path / 'demo'}",
        *(f"analysis.{o}" for o in FAST_ANALYSIS),
    ]
    proc = reproduce_cli(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = tmp_path / "demo"
    assert "Runs of experiment demo: 2 completed" in proc.stdout, proc.stdout[-3000:]
    assert "## digits / small_cnn" in proc.stdout
    table = proc.stdout.split("## digits / small_cnn", 1)[1]
    assert "| method | S1 | AMI(C1;C2) | H(Z) |" in table
    assert "| simclr |" in table
    assert "| simsiam |" in table
    assert "main_table.md" in proc.stdout
    for name in ["main_table.md", "summary.md", "runs.csv", "correlations.csv", "reproduce.log"]:
        assert (out / name).stat().st_size > 0, name
    assert list((out / "tables").glob("*.md"))
    figures = list((out / "figures").glob("*.png"))
    assert figures
    assert all(f.stat().st_size > 1000 for f in figures)
    runs = pd.read_csv(out / "runs.csv")
    assert sorted(runs.groupby("method")["epoch"].apply(list).items()) == [
        ("simclr", [0, 1, 2]),
        ("simsiam", [0, 1, 2]),
    ]
    sweep = tmp_path / "outputs" / "sweeps" / "demo"
    records = {d.parent.name: d.read_text() for d in sweep.glob("*/metrics.jsonl")}
    suffix = "trainer.epochs=2,trainer.warmup_epochs=1"  # the overrides that change results
    assert sorted(records) == [
        f"digits-small_cnn-simclr-s0-{suffix}",
        f"digits-small_cnn-simsiam-s0-{suffix}",
    ]

    again = reproduce_cli(*args, cwd=tmp_path)  # resumes: nothing left to train or evaluate
    assert again.returncode == 0, again.stderr[-4000:]
    assert "Runs of experiment demo: 2 completed" in again.stdout, again.stdout[-3000:]
    assert {name: (sweep / name / "metrics.jsonl").read_text() for name in records} == records


@pytest.mark.slow
def test_tiny_sweep_over_one_key_end_to_end_selects_models(reproduce_cli, tiny_overrides, tmp_path):
    """labelfree-reproduce over method.temperature {0.2, 0.5} (1 epoch on digits): the runs are
    grouped by the key and model_selection.csv holds the expected rows, checked on runs.csv."""
    keep = [o for o in tiny_overrides if not o.startswith(("trainer.epochs", "trainer.warmup"))]
    compute = "[silhouette,entropy,rankme,linear_probe_acc,fewshot_probe_acc]"
    args = [
        "seed=0",
        "method=simclr",
        "method.temperature=0.2,0.5",
        *keep,
        "trainer.epochs=1",
        "trainer.warmup_epochs=0",
        f"metrics.compute={compute}",
        f"paths.output_dir={tmp_path / 'outputs'}",
        f"output={tmp_path / 'out'}",
        "analysis.bootstrap.n_resamples=50",
        "analysis.figures.enabled=false",
    ]
    proc = reproduce_cli(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Runs of experiment demo: 2 completed" in proc.stdout, proc.stdout[-3000:]
    printed = proc.stdout
    main = printed.index("## digits / small_cnn")
    assert main < printed.index("| simclr, method.temperature=0.2 |")
    assert main < printed.index("| simclr, method.temperature=0.5 |")
    assert main < printed.index("## Model selection: digits / small_cnn") < printed.index("Outputs")

    out = tmp_path / "out"
    runs = pd.read_csv(out / "runs.csv", dtype={"method.temperature": str})
    final = runs[runs["epoch"] == 1].set_index("method.temperature")
    assert sorted(final.index) == ["0.2", "0.5"]
    selection = pd.read_csv(out / "model_selection.csv", dtype={"method.temperature": str})
    selectors = ["lf/entropy", "lf/rankme", "lf/silhouette", "sup/fewshot_probe_acc"]
    counts = selection.groupby(["kind", "aggregate"]).size().to_dict()
    assert counts == {("checkpoint", "mean"): 4, ("checkpoint", "per_run"): 8, ("run", "pick"): 4}
    chosen = selection[selection["kind"] == "run"].set_index("selector")
    assert sorted(chosen.index) == selectors
    assert set(chosen["method"]) == set(chosen["method.temperature"]) == {"all"}
    assert set(chosen["n_runs"]) == {2}
    acc = final["sup/linear_probe_acc"]
    for selector in ["lf/rankme", "lf/silhouette", "sup/fewshot_probe_acc"]:
        row = chosen.loc[selector]
        assert row["direction"] == "higher"
        picked = final[selector].idxmax()  # two runs: no tie expected
        assert row["pick"] == f"simclr, method.temperature={picked}, s0"
        assert row["pick_target"] == pytest.approx(acc[picked])
        assert row["regret"] == pytest.approx(acc.max() - acc[picked])
        assert row["random_regret"] == pytest.approx(acc.max() - acc.mean())
    assert chosen.loc["lf/entropy", "direction"] == "none"
    assert pd.isna(chosen.loc["lf/entropy", "pick"])
    per_run = selection[selection["aggregate"] == "per_run"]
    assert sorted(per_run["method.temperature"].unique()) == ["0.2", "0.5"]
    assert set(per_run["pick_epoch"].dropna()) <= {0, 1}
    for suffix in ("csv", "md", "tex"):
        assert (out / f"model_selection.{suffix}").stat().st_size > 0
