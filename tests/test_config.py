from pathlib import Path

import pytest
import yaml

from bench.config import ConfigError, RunConfig, deep_merge, load_card_dict, parse_overrides, resolve_config


def test_resolved_config_merges_defaults_cards_and_overrides():
    cfg = resolve_config("unet", "bbbc039", overrides=["train.epochs=2", "method.params.boundary_width=3"], seed=4)
    assert cfg.train.epochs == 2
    assert cfg.method.params["boundary_width"] == 3
    assert cfg.seed == 4
    assert cfg.train.patch_size == [256, 256]  # from the dataset card
    assert cfg.train.lr == 0.001  # from the method card
    assert cfg.run_dir() == Path("runs/bbbc039/unet/seed4")


def test_unknown_key_names_it_and_suggests():
    with pytest.raises(ConfigError, match=r"'train.epoch'.*Did you mean 'train.epochs'.*Valid keys under train"):
        resolve_config("unet", "bbbc039", overrides=["train.epoch=2"])
    with pytest.raises(ConfigError, match=r"method.params.dice_wieght.*'method.params.dice_weight'"):
        resolve_config("unet", "bbbc039", overrides=["method.params.dice_wieght=2"])


def test_invalid_value_names_key():
    with pytest.raises(ConfigError, match=r"train.lr: Input should be greater than 0"):
        resolve_config("unet", "bbbc039", overrides=["train.lr=-1"])


def test_unknown_card_lists_valid_names():
    with pytest.raises(ConfigError, match=r"unknown method 'unett'. Did you mean 'unet'"):
        resolve_config("unett", "bbbc039")


def test_parse_overrides_yaml_values():
    assert parse_overrides(["a.b=2", "a.c=[1,2]", "d=null", "e=text"]) == {
        "a": {"b": 2, "c": [1, 2]}, "d": None, "e": "text"}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_overrides(["novalue"])


def test_base_inheritance_child_overrides_only_what_differs(tmp_path, monkeypatch):
    (tmp_path / "methods").mkdir()
    (tmp_path / "methods" / "_parent.yaml").write_text(yaml.safe_dump(
        {"impl": "unet", "description": "parent", "params": {"dice_weight": 0.5, "boundary_width": 1},
         "train": {"epochs": 7, "lr": 0.01}}))
    (tmp_path / "methods" / "child.yaml").write_text(yaml.safe_dump(
        {"_base_": "_parent.yaml", "params": {"boundary_width": 3}, "train": {"lr": 0.002}}))
    monkeypatch.setenv("BENCH_CARD_PATH", str(tmp_path))
    d = load_card_dict(tmp_path / "methods" / "child.yaml", "methods")
    assert d["params"] == {"dice_weight": 0.5, "boundary_width": 3}
    assert d["train"] == {"epochs": 7, "lr": 0.002}
    assert d["name"] == "child"
    cfg = resolve_config("child", "bbbc039")
    assert cfg.train.epochs == 7 and cfg.train.lr == 0.002 and cfg.method.description == "parent"


def test_base_cycle_is_reported(tmp_path):
    (tmp_path / "a.yaml").write_text("_base_: b.yaml\nimpl: unet\n")
    (tmp_path / "b.yaml").write_text("_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_card_dict(tmp_path / "a.yaml", "methods")


def test_delete_replaces_instead_of_merging():
    assert deep_merge({"a": {"x": 1, "y": 2}}, {"a": {"_delete_": True, "z": 3}}) == {"a": {"z": 3}}


def test_saved_config_round_trips_and_reproduces_hash(tmp_path):
    from bench.config import dump_config

    cfg = resolve_config("unet", "bbbc039", overrides=["train.epochs=3"], seed=1)
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(cfg))
    again = resolve_config(overlay=path)
    assert again.config_hash() == cfg.config_hash()
    assert RunConfig.model_validate(yaml.safe_load(path.read_text())) == cfg


def test_bad_yaml_names_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        resolve_config("unet", "bbbc039", overlay=bad)


def test_several_overlays_merge_in_order(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("train: {epochs: 3, lr: 0.01}\n")
    b.write_text("train: {lr: 0.02}\nmethod:\n  params:\n    network: {name: monai_unet, options: {_delete_: true, channels: [8, 16]}}\n")
    cfg = resolve_config("unet", "bbbc039", overlay=[a, b])
    assert (cfg.train.epochs, cfg.train.lr) == (3, 0.02)
    assert cfg.method.params["network"] == {"name": "monai_unet", "options": {"channels": [8, 16]}}


def test_a_method_preset_lies_under_the_users_settings_and_outside_the_hash():
    from bench.config import ConfigError, resolve_config

    plain = resolve_config("pde3d_unet", "brats2015")
    cpu = resolve_config("pde3d_unet", "brats2015", overrides=["preset=cpu"])
    assert cpu.method.params["network"]["options"]["features"] == [8, 8, 16, 32, 64, 8]
    assert cpu.method.params["network"]["options"]["pde_stages"] == ["stage3", "stage4"]  # the rest stays
    assert plain.method.params["network"]["options"]["features"][0] == 32
    mine = resolve_config("pde3d_unet", "brats2015", overrides=[
        "preset=cpu", "method.params.network.options.features=[4,4,8,16,32,4]"])
    assert mine.method.params["network"]["options"]["features"][0] == 4  # --set wins over the preset
    # children inherit the preset; V-Net's replaces unet3d's (no widths to shrink)
    assert resolve_config("pde3d_unet_k5", "brats2015", overrides=["preset=cpu"]).method.params[
        "network"]["options"]["features"][0] == 8
    assert resolve_config("vnet", "brats2015", overrides=["preset=cpu"]).method.params["network"]["options"] == {}
    with pytest.raises(ConfigError, match="preset 'gpu': method card 'pde3d_unet' has the presets cpu"):
        resolve_config("pde3d_unet", "brats2015", overrides=["preset=gpu"])
    # a preset added to a card changes the hash of no run that does not use it
    edited = resolve_config("pde3d_unet", "brats2015", overrides=["method.presets.tiny.params.lambda_pde=0.5"])
    assert edited.config_hash() == plain.config_hash()


def test_a_preset_with_keys_it_cannot_set_is_refused():
    from bench.config import ConfigError, resolve_config

    with pytest.raises(ConfigError, match=r"presets.bad: unknown keys \['seed'\]"):
        resolve_config("pde3d_unet", "brats2015", overrides=["method.presets.bad.seed=3", "preset=bad"])
