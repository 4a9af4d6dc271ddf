"""Every config file loads, presets resolve by name, and overrides keep types."""

import pathlib

import pytest

from moe_asr import config_lib
from moe_asr.data.synth import corpus

CONFIGS = config_lib.config_dir()
EXPERIMENTS = sorted(p for p in CONFIGS.glob("*.py") if p.stem not in ("__init__", "base"))
CORPORA = sorted(p for p in (CONFIGS / "corpus").glob("*.py") if p.stem not in ("__init__", "base"))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_experiment_configs_load(path):
  cfg = config_lib.load_config(path)
  for section in ("model", "data", "mesh"):
    assert section in cfg
  assert cfg.model.encoder.lid_layer < min(cfg.model.encoder.moe_layers)
  assert max(cfg.model.encoder.moe_layers) < cfg.model.encoder.num_layers


@pytest.mark.parametrize("path", CORPORA, ids=lambda p: p.stem)
def test_corpus_configs_validate(path):
  cfg = config_lib.load_config(path)
  corpus.validate_config(cfg)
  assert cfg.name == path.stem


def test_overrides_parse_and_type_check():
  cfg = config_lib.load_config(
    CONFIGS / "tiny.py",
    [
      "--config.model.encoder.num_layers=6",
      "config.model.encoder.router=learned",
      "model.encoder.capacity_factor=1.25",
      "data.buckets=((2.0, 8),)",
    ],
  )
  assert cfg.model.encoder.num_layers == 6
  assert cfg.model.encoder.router == "learned"
  assert cfg.model.encoder.capacity_factor == 1.25
  assert cfg.data.buckets == ((2.0, 8),)
  with pytest.raises(TypeError, match="expected int"):
    config_lib.load_config(CONFIGS / "tiny.py", ["model.encoder.num_layers=six"])
  with pytest.raises(KeyError, match="Unknown config key"):
    config_lib.load_config(CONFIGS / "tiny.py", ["model.encoder.num_layer=6"])
  with pytest.raises(FileNotFoundError):
    config_lib.load_config(CONFIGS / "missing.py")


def test_expert_map_setting_reaches_the_moe_layers():
  from flax import nnx

  from moe_asr.models import model as model_lib

  cfg = config_lib.load_config(CONFIGS / "demo.py")
  assert (cfg.model.encoder.expert_map, cfg.model.decoder.expert_map) == ("pairs", "modulo")
  model = nnx.eval_shape(
    lambda: model_lib.MoeAsr(
      cfg.model, vocab_size=40, num_intents=4, num_slot_tags=5, rngs=nnx.Rngs(0)
    )
  )
  # Demo: 4 encoder experts keep en apart from es, hi and cmn; 6 decoder experts, modulo.
  encoder_maps = {b.ff2.expert_map for b in model.encoder.blocks if b.use_moe}
  assert encoder_maps == {(0, 1, 2, 3, 1, 2, 0)}
  decoder_maps = {b.ffn.expert_map for b in model.decoder.blocks if b.moe}
  assert decoder_maps == {(0, 1, 2, 3, 4, 5, 0)}
  # Presets default to the modulo map; an explicit map is a tuple in a config file and a
  # string of ids in a command-line override.
  tiny = config_lib.load_config(CONFIGS / "tiny.py")
  assert tiny.model.encoder.expert_map == "modulo"
  tiny.model.encoder.expert_map = (0, 1, 2, 3, 1, 2, 0)
  override = config_lib.load_config(CONFIGS / "tiny.py", ["model.decoder.expert_map=0 1 2 3 1 2 0"])
  assert override.model.decoder.expert_map == "0 1 2 3 1 2 0"


def test_presets_ship_inside_the_package():
  import moe_asr

  assert pathlib.Path(moe_asr.__file__).resolve().parent / "configs" == CONFIGS
  assert config_lib.presets() == ["demo", "fleurs_large", "large", "small", "tiny", "transfer"]
  assert config_lib.presets("corpus") == ["demo", "tiny"]


def test_a_preset_name_or_a_path(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # Names resolve from any directory.
  assert config_lib.resolve_config("tiny") == (CONFIGS / "tiny.py", None)
  assert config_lib.resolve_config("tiny", kind="corpus") == (CONFIGS / "corpus" / "tiny.py", None)
  assert config_lib.resolve_config("corpus/demo") == (CONFIGS / "corpus" / "demo.py", None)
  assert config_lib.resolve_config("base:small") == (CONFIGS / "base.py", "small")
  assert config_lib.load_config("base:small").model_preset == "small"
  assert config_lib.load_config("tiny", kind="corpus").name == "tiny"
  assert config_lib.load_config("large").model_preset == "large"
  with pytest.raises(FileNotFoundError, match="tiny, transfer, corpus/demo, corpus/tiny"):
    config_lib.load_config("tiniest")
  with pytest.raises(FileNotFoundError, match="corpus preset: demo, tiny"):
    config_lib.load_config("small.py", kind="corpus")  # A path that does not exist.
  # A file wins over a preset of the same name.
  (tmp_path / "tiny").write_text("def get_config():\n  return {'name': 'mine'}\n")
  assert config_lib.load_config("tiny").name == "mine"


def test_a_config_file_outside_the_package(tmp_path, monkeypatch):
  """A user's file builds on the packaged presets, or on a `configs/` package of its own."""
  monkeypatch.chdir(tmp_path)
  mine = tmp_path / "mine.py"
  mine.write_text(
    "from moe_asr.configs import tiny\n\n"
    "def get_config():\n  c = tiny.get_config()\n  c.train.steps = 7\n  return c\n"
  )
  cfg = config_lib.load_config(mine, ["train.learning_rate=0.5"])
  assert (cfg.train.steps, cfg.train.learning_rate) == (7, 0.5)
  own = tmp_path / "proj" / "configs"
  own.mkdir(parents=True)
  (own / "__init__.py").write_text("")
  (own / "shared_steps_for_test.py").write_text("STEPS = 11\n")
  (own / "exp.py").write_text(
    "from configs import shared_steps_for_test\nfrom moe_asr.configs import tiny\n\n"
    "def get_config():\n  c = tiny.get_config()\n"
    "  c.train.steps = shared_steps_for_test.STEPS\n  return c\n"
  )
  try:
    assert config_lib.load_config(own / "exp.py").train.steps == 11
  finally:
    import sys

    sys.path.remove(str(own.parent))
    sys.modules.pop("configs", None)
    sys.modules.pop("configs.shared_steps_for_test", None)
