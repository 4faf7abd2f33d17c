"""The workflow's grid (ftbc/run/grid.py) and data preparation (ftbc/data/prepare.py), without Snakemake."""

import sys
import tarfile

import pytest
import yaml
from PIL import Image

import baselines
from baselines import get_method
from ftbc.run import grid
from ftbc.errors import DataError, UserError
from ftbc.data.prepare import make_subset, prepare


def _config(**over):
    c = {"data_root": "d", "workdir": "w", "T": [1, 2, 4],
         "anns": [{"dataset": "cifar10", "arch": "vgg_small", "activations": ["relu", "qcfs"], "recipe": "quick_cpu",
                   "seeds": [0, 1]}]}
    return {**c, **over}


def test_methods_meet_the_anns_of_their_activation_and_t_dependence_decides_the_runs():
    c = _config(methods=["maxnorm", "snnc_light", "qcfs", "rts"])
    jobs = grid.evaluations(c)
    by = {}
    for ev in jobs:
        by.setdefault(ev.method, []).append((ev.ann.act, ev.ann.seed, ev.steps))
    assert get_method("maxnorm", "cifar10").t_dependent is False
    assert sorted(by["maxnorm"]) == [("relu", 0, "1-4"), ("relu", 1, "1-4")]
    assert sorted(by["snnc_light"]) == [("relu", s, T) for s in (0, 1) for T in ("1", "2", "4")]
    assert sorted(by["qcfs"]) == [("qcfs", 0, "1-4"), ("qcfs", 1, "1-4")]
    assert "rts" not in by  # no clipped-ReLU ANN in this grid
    assert len(grid.anns(c)) == 4


def test_method_settings_reach_only_their_method():
    c = _config(methods=["snnc_light", "ftbc_relu"], method_settings={"ftbc_relu": {"ftbc.iterations": 3}})
    settings = {ev.method: ev.settings for ev in grid.evaluations(c)}
    assert settings == {"snnc_light": (), "ftbc_relu": (("ftbc.iterations", 3),)}
    with pytest.raises(UserError, match="unknown setting"):
        grid.evaluations(_config(methods=["maxnorm"], method_settings={"maxnorm": {"nope": 1}}))


def test_unknown_method_and_conflicting_anns_are_clear_errors():
    with pytest.raises(UserError, match="unknown method.*registered: maxnorm"):
        grid.evaluations(_config(methods=["maxnorm", "nosuch"]))
    twice = _config()
    twice["anns"] = twice["anns"] + [{**twice["anns"][0], "recipe": "other"}]
    with pytest.raises(UserError, match="twice"):
        grid.anns(twice)


@pytest.mark.parametrize("over, message", [
    (dict(method_settings={"snnc_lite": {"threshold_positions": 4096}}),
     "method_settings names unknown method(s) snnc_lite; registered: maxnorm"),
    # a method the grid does not run is checked all the same
    (dict(methods=["maxnorm"], method_settings={"snnc_light": {"threshold_positons": 4096}}),
     "method snnc_light: unknown setting 'threshold_positons'"),
    (dict(anns=[{"dataset": "cifar10", "arch": "vgg_smal", "activations": ["relu"], "recipe": "quick_cpu"}]),
     "anns entry cifar10/vgg_smal: unknown arch 'vgg_smal'; models:"),
    (dict(anns=[{"dataset": "cifar10", "arch": "vgg_small", "activations": ["relu"], "recipe": "quick_cpi"}]),
     "anns entry cifar10/vgg_small: unknown recipe 'quick_cpi'"),
    (dict(plugins=["no_such_plugin_module"]), "FTBC_PLUGINS names 'no_such_plugin_module', which cannot be imported"),
])
def test_check_rejects_names_the_jobs_would_not_know(over, message):
    grid.check(_config())  # the valid grid passes
    with pytest.raises(UserError) as e:
        grid.check(_config(**over))
    assert message in str(e.value)


def test_plugins_register_their_methods_before_the_names_are_checked(tmp_path, monkeypatch):
    (tmp_path / "my_grid_plugin.py").write_text(
        "from baselines import get_method, register_method\n"
        "import dataclasses\n"
        "register_method(dataclasses.replace(get_method('maxnorm'), name='my_grid_method'))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(baselines, "_METHODS", dict(baselines._METHODS))  # the registration ends with the test
    monkeypatch.delitem(sys.modules, "my_grid_plugin", raising=False)
    c = _config(plugins=["my_grid_plugin"], methods=["my_grid_method"],
                method_settings={"my_grid_method": {"threshold_batches": 3}})
    grid.check(c)
    assert {ev.method for ev in grid.evaluations(c)} == {"my_grid_method"}
    assert grid.plugins(c) == ["my_grid_plugin"]
    sys.modules.pop("my_grid_plugin")


def test_resources_layer_defaults_top_level_and_entry():
    c = _config(resources={"train": {"gpu": 1}})
    c["anns"][0]["resources"] = {"train": {"runtime": 600}}
    assert grid.resources_for(c, "train", "cifar10", "vgg_small") == {"gpu": 1, "mem_mb": 4000, "runtime": 600}
    assert grid.resources_for(c, "evaluate", "cifar10", "vgg_small") == grid.RESOURCE_DEFAULTS


def test_archives_and_subsets_are_read_from_the_work_folder():
    assert grid.data_root(_config(), "cifar10") == "d"
    assert grid.data_root(_config(data_root="x/c.tar.gz"), "cifar10") == "w/data/cifar10"
    sub = _config(data_subset={"train_per_class": 5})
    assert grid.data_root(sub, "cifar10") == "w/data/cifar10"
    assert grid.subset_args(sub) == "--train-per-class 5"


def test_validation_errors_become_one_line():
    text = ("Error validating config file.\nValidationError: 'gelu' is not one of ['relu', 'qcfs', 'clip']\n\n"
            "Failed validating 'enum' in schema[...]:\n    {...}\n\nOn instance['anns'][0]['activations'][1]:\n"
            "    'gelu'")
    assert grid.explain_validation(text) == ("invalid configuration at anns[0].activations[1]: 'gelu' is not one "
                                             "of ['relu', 'qcfs', 'clip'] (see workflow/schemas/config.schema.yaml)")


def _tiny_cifar(root, per_class=3):
    from ftbc.data.catalog import CIFAR_CLASSES

    for split in ("train", "test"):
        for c, name in enumerate(CIFAR_CLASSES["cifar10"]):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (32, 32), (c * 20, i * 40, 0)).save(d / f"{i:04d}.png")
    return root


def test_prepare_extracts_an_archive_and_takes_a_subset(tmp_path, monkeypatch):
    monkeypatch.setenv("FTBC_CACHE", str(tmp_path / "cache"))
    tree = _tiny_cifar(tmp_path / "cifar10-jpeg")
    archive = tmp_path / "cifar10-jpeg.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree, arcname="cifar10-jpeg")
    rec = prepare("cifar10", archive, extract_to=tmp_path / "work" / "cifar10", subset={"train": 2, "test": 1})
    assert (rec["n_train"], rec["n_test"], rec["classes"]) == (20, 10, 10)
    # only the subset's members are extracted
    assert sorted(p.name for p in (tmp_path / "work" / "cifar10" / "cifar10-jpeg" / "train" / "cat").iterdir()) == \
        ["0000.png", "0001.png"]
    assert not [p for p in (tmp_path / "work").iterdir() if p.name.startswith(".")]  # no temporary left
    # from a folder, a subset is a tree of links; a finished one is reused as it is
    sub = make_subset(tree, tmp_path / "sub", {"train": 1, "test": None})
    assert len(list((sub / "train").rglob("*.png"))) == 10 and len(list((sub / "test").rglob("*.png"))) == 30
    assert (sub / "train" / "cat" / "0000.png").is_symlink()
    assert make_subset(tree, sub, {"train": 3}) == sub


def test_data_roots_are_found_and_archives_extracted_once(tmp_path, monkeypatch):
    from ftbc.data import prepare as prep

    monkeypatch.setenv("FTBC_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(prep.ROOT_ENV, raising=False)
    checkout = tmp_path / "checkout"
    monkeypatch.setattr(prep, "CHECKOUT", checkout)
    with pytest.raises(DataError, match=r"no cifar10 copy found \(looked at .*checkout/data/cifar10-jpeg, "):
        prep.resolve_data_root("cifar10", None)
    assert prep.resolve_data_root("cifar10", "auto", download=True) == checkout / "data"  # torchvision's
    assert grid.raw_data_root({"data_root": "auto"}, "cifar10") == "auto"  # prepare_data says what is missing
    # the archive beside the checkout (../shared/data) is found, extracted once into the cache, reused
    shared = tmp_path / "shared" / "data"
    shared.mkdir(parents=True)
    tree = _tiny_cifar(tmp_path / "src" / "cifar10-jpeg")
    with tarfile.open(shared / "cifar10-jpeg.tar.gz", "w:gz") as tar:
        tar.add(tree, arcname="cifar10-jpeg")
    found = prep.resolve_data_root("cifar10", None)
    assert found.parent.parent == tmp_path / "cache" / "extracted" and (found / "train" / "cat").is_dir()
    stamp = found.stat().st_mtime_ns
    assert prep.resolve_data_root("cifar10", str(shared / "cifar10-jpeg.tar.gz")) == found  # the same archive
    assert found.stat().st_mtime_ns == stamp
    assert grid.raw_data_root({"data_root": "auto"}, "cifar10") == str(shared / "cifar10-jpeg.tar.gz")
    # the checkout's own data/ comes first, then $FTBC_DATA_ROOT after the shared archive
    (checkout / "data").mkdir(parents=True)
    (checkout / "data" / "cifar10-jpeg").symlink_to(tree)
    assert prep.resolve_data_root("cifar10", "auto") == checkout / "data" / "cifar10-jpeg"
    assert prep.resolve_data_root("cifar10", tree) == tree  # a folder is itself
    monkeypatch.setenv(prep.ROOT_ENV, str(tmp_path / "elsewhere"))
    assert prep.candidates("cifar10")[-1] == tmp_path / "elsewhere"


def test_prepare_names_what_is_wrong(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        prepare("cifar10", tmp_path / "nowhere")
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"not a tar")
    with pytest.raises(DataError, match="could not extract"):
        prepare("cifar10", bad, extract_to=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_shipped_configs_load_into_a_grid():
    for name in ("config.yaml", "smoke.yaml", "paper.yaml", "cifar10-resnet20.yaml", "ftbc-solvers.yaml"):
        c = yaml.safe_load(open(f"config/{name}"))
        c.setdefault("workdir", "runs/x")
        assert grid.evaluations(c), name


def test_given_checkpoints_replace_training_for_their_activation():
    c = _config(methods=["maxnorm", "qcfs"])
    c["anns"][0].update(seeds=[0], checkpoints={"qcfs": "results/some/qcfs/model.safetensors"})
    by_act = {a.act: a for a in grid.anns(c)}
    assert grid.checkpoint_path(c, by_act["qcfs"]) == "results/some/qcfs/model.safetensors"
    assert grid.checkpoint_path(c, by_act["relu"]) == f"{grid.ann_dir(c, by_act['relu'])}/model.safetensors"
    assert {ev.method for ev in grid.evaluations(c) if ev.ann.checkpoint} == {"qcfs"}
    bad = _config()
    bad["anns"][0].update(seeds=[0], checkpoints={"clip": "x.safetensors"})
    with pytest.raises(UserError, match="do not list"):
        grid.anns(bad)
    two = _config()
    two["anns"][0].update(seeds=[0, 1], checkpoints={"relu": "x.safetensors"})
    with pytest.raises(UserError, match="one seed"):
        grid.anns(two)


def test_calibration_seeds_cross_the_ann_seeds_and_name_their_folders():
    c = _config(methods=["snnc_light"], evaluation={"calibration_seeds": [3, 4]})
    jobs = grid.evaluations(c)
    assert sorted({(ev.ann.seed, ev.calib_seed) for ev in jobs}) == [(0, 3), (0, 4), (1, 3), (1, 4)]
    assert len(jobs) == 2 * 2 * 3  # ANN seeds x calibration seeds x T
    dirs = {grid.eval_dir(c, ev) for ev in jobs}
    assert len(dirs) == len(jobs) and "w/snn/cifar10/vgg_small/seed1/snnc_light/cal4/T2" in dirs
    keys = {grid.evaluation_key(ev) for ev in jobs}
    assert ("cifar10", "vgg_small", 1, "snnc_light", 4, "2") in keys
    assert {ev.calib_seed for ev in grid.evaluations(_config(methods=["snnc_light"]))} == {0}
