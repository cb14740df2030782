import glob
import os

import pytest

from lealla_tf import config, paths

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(CONFIGS, "*.yaml"))))
def test_every_config_loads(path):
    cfg = config.load(path)
    assert cfg.model.hidden_size % cfg.model.num_attention_heads == 0


def test_paper_shapes():
    small = config.load(os.path.join(CONFIGS, "lealla_small.yaml")).model
    base = config.load(os.path.join(CONFIGS, "lealla_base.yaml")).model
    large = config.load(os.path.join(CONFIGS, "lealla_large.yaml")).model
    assert [(m.num_layers, m.hidden_size, m.num_attention_heads, m.intermediate_size)
            for m in (small, base, large)] == [(24, 128, 8, 512), (24, 192, 12, 768),
                                               (24, 256, 8, 1024)]


def test_overrides_are_typed():
    cfg = config.load(os.path.join(CONFIGS, "tiny.yaml"),
                      ["train.steps=7", "loss.margin=0.25", "data.languages=[deu, fra]",
                       "train.mixed_precision=mixed_bfloat16"])
    assert cfg.train.steps == 7 and isinstance(cfg.train.steps, int)
    assert cfg.loss.margin == 0.25
    assert cfg.data.languages == ["deu", "fra"]
    # YAML 1.1 reads 2e-3 as a string; float fields accept it.
    assert config.load(None, ["train.learning_rate=2e-3"]).train.learning_rate == 0.002


def test_base_chain_and_override_order(tmp_path):
    (tmp_path / "a.yaml").write_text("model:\n  hidden_size: 64\n  num_layers: 3\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nmodel:\n  num_layers: 5\n")
    cfg = config.load(str(tmp_path / "b.yaml"), ["model.num_attention_heads=4"])
    assert (cfg.model.hidden_size, cfg.model.num_layers, cfg.model.num_attention_heads) == (64, 5, 4)


def test_base_cycle_is_an_error(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(config.ConfigError, match="cycle"):
        config.load(str(tmp_path / "a.yaml"))


@pytest.mark.parametrize("override, message", [
    ("model.hidden_sise=3", "unknown config key.*model.hidden_sise"),
    ("modle.hidden_size=3", "unknown config key.*modle"),
    ("train.steps=many", "train.steps: expected an integer"),
    ("train.learning_rate=fast", "train.learning_rate: expected a number"),
    ("loss.bidirectional=maybe", "loss.bidirectional: expected true or false"),
    ("distribute.strategy=gpu_farm", "distribute.strategy must be"),
    ("model.num_attention_heads=3", "divisible"),
    ("train.steps=0", "train.steps must be positive"),
    ("no_equals_sign", "must look like"),
    ("model.dropout_rate=1.5", "dropout_rate must be in"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(config.ConfigError, match=message):
        config.load(os.path.join(CONFIGS, "tiny.yaml"), [override])


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(config.ConfigError, match="not found"):
        config.load(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(config.ConfigError, match="not valid YAML"):
        config.load(str(bad))


def test_save_roundtrip(tmp_path):
    cfg = config.load(os.path.join(CONFIGS, "lealla_base.yaml"), ["train.steps=3"])
    config.save(cfg, str(tmp_path / "c.yaml"))
    assert config.load(str(tmp_path / "c.yaml")) == cfg


def test_data_dir_errors(monkeypatch, tmp_path):
    monkeypatch.delenv("LEALLA_DATA_DIR", raising=False)
    monkeypatch.setenv("LEALLA_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(config.ConfigError, match="LEALLA_DATA_DIR.*lealla data fetch"):
        paths.data_dir()
    # Neither set: the cache's data root once it exists.
    (tmp_path / "cache" / "datasets").mkdir(parents=True)
    assert paths.data_dir() == str(tmp_path / "cache" / "datasets")
    monkeypatch.setenv("LEALLA_DATA_DIR", str(tmp_path / "missing"))
    with pytest.raises(config.ConfigError, match="does not exist"):
        paths.data_dir()
    assert paths.data_dir(str(tmp_path)) == str(tmp_path)


def test_shipped_configs_load_by_name(tmp_path, monkeypatch):
    assert "lealla_small" in config.recipe_names() and "demo" in config.recipe_names()
    by_name = config.load("lealla_small")
    assert by_name == config.load("lealla_small.yaml")
    assert by_name == config.load(os.path.join(config.package_config_dir(), "lealla_small.yaml"))
    assert by_name.model.hidden_size == 128
    # A recipe's `base:` chain resolves inside the package too.
    assert config.load("distill_lealla_small_labse_gpu").model.name == "lealla_small"
    with pytest.raises(config.ConfigError, match="shipped: .*lealla_small"):
        config.load("lealla_tiniest")
    # A file in the working directory wins over a shipped config of the same name.
    (tmp_path / "tiny.yaml").write_text("model:\n  hidden_size: 48\n  num_attention_heads: 4\n")
    monkeypatch.chdir(tmp_path)
    assert config.load("tiny.yaml").model.hidden_size == 48
    assert config.load("tiny").model.hidden_size == 32


def test_configs_on_other_file_systems():
    """Configs (and their base chain) load from any tf.io.gfile path."""
    from lealla_tf import fileio
    fileio.atomic_write("ram://cfgtest/shape.yaml", "model:\n  hidden_size: 64\n")
    fileio.atomic_write("ram://cfgtest/sub/recipe.yaml",
                        "base: ../shape.yaml\ntrain:\n  steps: 7\n")
    cfg = config.load("ram://cfgtest/sub/recipe.yaml")
    assert (cfg.model.hidden_size, cfg.train.steps) == (64, 7)
    config.save(cfg, "ram://cfgtest/saved.yaml")
    assert config.load("ram://cfgtest/saved.yaml") == cfg
