"""Grouping by what a sweep varied: detection from run.json configs, explicit keys, labels."""

import copy
import doctest

import pandas as pd
import pytest
from hydra import compose, initialize_config_module

from labelfree.analysis import groups
from labelfree.analysis.collect import collect_runs
from labelfree.analysis.groups import (
    add_group_columns,
    check_group_keys,
    config_table,
    flatten_config,
    group_frames,
    group_label,
    swept_keys,
)
from labelfree.analyze import analyze

SIMCLR = {
    "seed": 0,
    "logger": {"name": "csv"},  # not result-relevant: never a group key
    "data": {"name": "digits", "split_seed": 0, "augment": {"min_scale": 0.5}},
    "arch": {"name": "small_cnn", "widths": [32, 64]},
    "method": {"name": "simclr", "temperature": 0.5, "out_dim": 128, "optimizer": {"lr": 0.2}},
    "trainer": {"epochs": 20, "batch_size": 128, "device": "cpu"},
}
BYOL = {
    **SIMCLR,
    "method": {"name": "byol", "momentum": 0.99, "out_dim": 256, "optimizer": {"lr": 0.3}},
}


def config(base=SIMCLR, seed=0, **values):
    """A copy of ``base`` with seed and dotted ``values`` set (``method__temperature=0.2``)."""
    cfg = copy.deepcopy(base)
    cfg["seed"] = seed
    for dotted, value in values.items():
        node = cfg
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return cfg


def table(configs):
    """config_table of ``[(method, config), ...]`` (run dirs r0, r1, ...)."""
    identity = pd.DataFrame(
        [
            {"run_dir": f"r{i}", "dataset": "digits", "arch": "small_cnn", "method": m,
             "seed": c.get("seed", 2)}
            for i, (m, c) in enumerate(configs)
        ]
    )  # fmt: skip
    return config_table({f"r{i}": c for i, (_, c) in enumerate(configs)}, identity)


def test_flatten_keeps_result_keys_as_run_names_write_them():
    flat = flatten_config(SIMCLR)
    assert flat["method.temperature"] == "0.5"
    assert flat["arch.widths"] == "[32,64]"
    assert flat["seed"] == "0"
    assert not any(k.startswith("logger") or k == "trainer.device" for k in flat)
    assert flatten_config({}) == {}


def test_one_swept_key_besides_the_method():
    runs = [("simclr", config(seed=s, method__temperature=t)) for t in (0.2, 0.5) for s in (0, 1)]
    runs += [("byol", config(BYOL, seed=s)) for s in (0, 1)]
    # method.momentum, method.out_dim, method.optimizer.lr differ only with the method
    assert swept_keys(table(runs)) == ["method.temperature"]


def test_two_swept_keys():
    runs = [
        ("simclr", config(seed=s, method__temperature=t, method__optimizer__lr=lr))
        for t in (0.2, 0.5)
        for lr in (0.03, 0.3)
        for s in (0, 1)
    ]
    assert swept_keys(table(runs)) == ["method.optimizer.lr", "method.temperature"]


def test_two_swept_keys_give_one_group_per_combination_seeds_inside():
    runs = [
        ("simclr", config(seed=s, method__temperature=t, method__optimizer__lr=lr))
        for t in (0.5, 0.2)
        for lr in (0.3, 0.03)
        for s in (0, 1)
    ]
    configs = table(runs)
    keys = swept_keys(configs)
    tidy = add_group_columns(configs[["run_dir", "method", "seed"]], configs, keys, after="seed")
    groups = group_frames(tidy, keys)
    assert [label for label, _, _ in groups] == [  # natural order of the values
        "simclr, method.optimizer.lr=0.03, method.temperature=0.2",
        "simclr, method.optimizer.lr=0.03, method.temperature=0.5",
        "simclr, method.optimizer.lr=0.3, method.temperature=0.2",
        "simclr, method.optimizer.lr=0.3, method.temperature=0.5",
    ]
    assert [sorted(rows["seed"]) for _, _, rows in groups] == [[0, 1]] * 4


def test_runs_that_differ_only_by_seed_are_one_group():
    runs = [("simclr", config(seed=s, data__split_seed=s)) for s in (0, 1, 2)]
    runs += [("byol", config(BYOL, seed=s)) for s in (0, 1)]
    assert swept_keys(table(runs)) == []  # data.split_seed follows the seed: still seeds


def test_a_key_derived_from_a_swept_one_is_left_out_and_the_typed_one_wins():
    runs = [
        ("simclr", config(seed=s, trainer__batch_size=b, method__optimizer__lr=0.2 * b / 256))
        for b in (128, 256)
        for s in (0, 1)
    ]
    configs = table(runs)
    assert swept_keys(configs) == ["method.optimizer.lr"]  # alphabetical first; one is enough
    assert swept_keys(configs, prefer=["trainer.batch_size"]) == ["trainer.batch_size"]


def test_runs_without_a_config_take_no_part_and_get_empty_values():
    runs = [("simclr", config(seed=s, method__temperature=t)) for t in (0.2, 0.5) for s in (0, 1)]
    runs.append(("simclr", {}))
    configs = table(runs)
    assert configs["has_config"].tolist() == [True] * 4 + [False]
    assert swept_keys(configs) == ["method.temperature"]
    tidy = configs[["run_dir", "method"]].assign(epochs=20, epoch=0)
    added = add_group_columns(tidy, configs, ["method.temperature"], after="epochs")
    assert list(added.columns) == ["run_dir", "method", "epochs", "method.temperature", "epoch"]
    assert added["method.temperature"].tolist() == ["0.2", "0.2", "0.5", "0.5", ""]


def test_explicit_keys_are_checked_with_a_fix():
    runs = [("simclr", config(seed=s, method__temperature=t)) for t in (0.2, 0.5) for s in (0, 1)]
    configs = table(runs)
    assert check_group_keys(configs, ["trainer.epochs"]) == ["trainer.epochs"]
    with pytest.raises(ValueError, match=r"'method.temprature' is not a result-relevant.*"
                       r"vary between them: method.temperature.*group_by=null"):  # fmt: skip
        check_group_keys(configs, ["method.temprature"])
    with pytest.raises(ValueError, match="'seed' is always part of the grouping"):
        check_group_keys(configs, ["seed"])


def test_labels():
    assert group_label("simclr", {"method.temperature": "0.2", "x.y": "1"}) == (
        "simclr, method.temperature=0.2, x.y=1"
    )
    assert group_label("byol", {"method.temperature": ""}) == "byol"


def test_docstring_examples():
    result = doctest.testmod(groups, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0


@pytest.fixture
def temperature_sweep(tmp_path, write_run, make_records):
    """SimCLR x temperature {0.2, 0.5} x seeds {0, 1} (0.5 trains better), BYOL x seeds."""
    root = tmp_path / "sweep"
    for t, offset in ((0.2, -0.1), (0.5, 0.0)):
        for s in (0, 1):
            write_run(
                root / f"simclr-t{t}-s{s}",
                name=f"digits-small_cnn-simclr-s{s}-method.temperature={t}",
                seed=s,
                records=make_records(20, seed=s, offset=offset),
                config=config(seed=s, method__temperature=t),
                overrides=[f"method.temperature={t}"],
            )
    for s in (0, 1):
        write_run(
            root / f"byol-s{s}",
            method="byol",
            seed=s,
            records=make_records(20, seed=s + 5, offset=-0.05),
            config=config(BYOL, seed=s),
        )
    return root


def _compose(*overrides):
    with initialize_config_module("labelfree.conf", version_base="1.3"):
        return compose("analyze", overrides=list(overrides))


FAST = ["bootstrap.n_resamples=50", "figures.enabled=false"]


def test_analysis_groups_by_the_swept_key(temperature_sweep, tmp_path):
    out = tmp_path / "out"
    result = analyze(_compose(f"runs={temperature_sweep}", f"output={out}", *FAST))
    assert result.group_keys == ["method.temperature"]
    runs = pd.read_csv(out / "runs.csv")
    assert runs.columns[list(runs.columns).index("epochs") + 1] == "method.temperature"
    per_seed = result.correlations[result.correlations["aggregate"] == "per_seed"]
    sizes = per_seed.groupby(["method", "method.temperature"], dropna=False)["run"].nunique()
    assert sizes.to_dict() == {("byol", ""): 2, ("simclr", "0.2"): 2, ("simclr", "0.5"): 2}
    (main,) = result.main_tables
    rows = [line.split(" | ")[0] for line in main.markdown.splitlines()[2:] if line.startswith("|")]
    assert rows == [
        "| byol",
        "| simclr, method.temperature=0.2",
        "| simclr, method.temperature=0.5",
    ]
    assert "2 per method and setting" in main.caption
    assert "`method.temperature`" in (out / "summary.md").read_text()


def test_group_by_overrides_detection(temperature_sweep, tmp_path):
    none = analyze(
        _compose(f"runs={temperature_sweep}", f"output={tmp_path / 'a'}", "group_by=[]", *FAST)
    )
    assert none.group_keys == []
    assert "method.temperature" not in pd.read_csv(tmp_path / "a" / "runs.csv").columns
    assert set(none.correlations["method"]) == {"simclr", "byol", "all"}
    with pytest.raises(ValueError, match="'trainer.epoch' is not a result-relevant"):
        analyze(_compose(f"runs={temperature_sweep}", f"output={tmp_path / 'b'}",
                         "group_by=[trainer.epoch]", *FAST))  # fmt: skip


def test_runs_with_a_config_that_differs_only_by_seed_keep_their_layout(tmp_path, write_run):
    for s in (0, 1):
        write_run(tmp_path / "runs" / f"s{s}", seed=s, config=config(seed=s))
    collection = collect_runs(tmp_path / "runs", progress=False)
    configs = config_table(collection.configs, collection.runs)
    assert swept_keys(configs) == []
