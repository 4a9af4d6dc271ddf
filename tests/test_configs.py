"""Every config file loads, and overrides keep types."""

import pathlib

import pytest

from moe_asr import config_lib
from moe_asr.data.synth import corpus

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
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
