"""Transfer to a new language (Russian, held out of the tiny corpus) and to a new task.

The source is the session's tiny run (conftest.tiny_workdir: both MoE sections routed by
language, trained on 8 fake CPU devices); the transfer runs in a subprocess on one device.
"""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import REPO, run_cli
from flax import nnx

from moe_asr import runtime
from moe_asr.data import languages
from moe_asr.data import pipeline as pipeline_lib
from moe_asr.data import tokenizer as tokenizer_lib
from moe_asr.evaluation import score
from moe_asr.models import partitioning
from moe_asr.training import inputs, sharding, transfer
from moe_asr.training import state as state_lib

RU = languages.language_index("ru")


def _one_device_cli(*args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=0"
  return subprocess.run(
    [sys.executable, "-m", "moe_asr.cli", *args],
    capture_output=True,
    text=True,
    timeout=1200,
    cwd=REPO,
    env=env,
    check=False,
  )


@pytest.fixture(scope="module")
def source(tiny_workdir) -> pathlib.Path:
  """The tiny run: both MoE sections routed by language, trained on 8 devices."""
  cfg = score.workdir_config(tiny_workdir)
  assert cfg.model.encoder.router == cfg.model.decoder.router == "language"
  assert jax.device_count() == 8  # This process's devices, which the run inherited.
  return tiny_workdir


def _overrides(data_dir, steps: int = 4) -> list[str]:
  return [
    f"data.data_dir={data_dir}",
    f"train.steps={steps}",
    "train.log_every=2",
    "train.warmup_steps=2",
    "train.learning_rate=0.01",
    "data.buckets=((3.0,8),)",
    "compilation_cache=''",
  ]


def _routing(run, split: str, oracle_mix: float) -> dict[str, np.ndarray]:
  """Per-frame encoder routing of a batch of `split`, the language known (oracle_mix=1) or
  predicted by the frame LID (oracle_mix=0)."""
  pipe = inputs.make_pipeline(
    run.config, split, run.data, train=False, process_index=0, process_count=1
  )
  batch = next(iter(pipe))
  with run.mesh, partitioning.axis_rules(run.rules, run.mesh):
    model = nnx.merge(run.graphdef, run.rng_state, run.state).model
    model.eval()
    device = sharding.put_batch(pipeline_lib.device_arrays(batch), run.batch_shardings(batch))
    enc = nnx.jit(lambda m, b: m.encode(b, oracle_mix=oracle_mix))(model, device)
    out = jax.device_get(
      {
        "load": enc.enc.token_expert_load,  # [layers, batch, frames, experts]
        "lang": enc.frame_lang,  # [batch, frames], -1 unknown or padding
        "mask": enc.enc.mask,
        "lid": enc.enc.frame_lid_logits,  # [batch, frames, languages]
      }
    )
  return {k: np.asarray(v) for k, v in out.items()}


def test_growth_keeps_old_ids_classes_parameters_and_outputs(source, tiny_corpus, tmp_path):
  data_dir, _, _ = tiny_corpus
  workdir = tmp_path / "grown"
  cfg = transfer.transfer_config(
    source, workdir, language="ru", method="expert", overrides=_overrides(data_dir)
  )
  t = cfg.transfer
  assert t.new_language == "yes" and t.init_language in languages.LANGUAGE_CODES[:RU]
  old_tok = tokenizer_lib.Tokenizer.load(source / "tokenizer.model")
  new_tok = tokenizer_lib.Tokenizer.load(workdir / "tokenizer.model")
  assert new_tok.vocab_size > old_tok.vocab_size
  for i in range(old_tok.vocab_size):  # Every old id keeps its piece.
    assert new_tok.id_to_piece(i) == old_tok.id_to_piece(i)
  assert [new_tok.id_to_piece(i) for i in new_tok.encode("привет")] != ["<0xD0>"]
  # The new tokens are gated by the new language's LID, unless a transfer override says not:
  # the section's overrides are in force before the settings are decided from them.
  assert tuple(cfg.model.token_languages) == ((old_tok.vocab_size, new_tok.vocab_size, "ru"),)
  ungated = transfer.transfer_config(
    source,
    tmp_path / "ungated",
    language="ru",
    method="expert",
    replay=0.5,
    overrides=[*_overrides(data_dir), "transfer.vocab_gate='none'"],
  )
  assert ungated.transfer.vocab_gate == "none" and tuple(ungated.model.token_languages) == ()
  # Replay: the old training split's first utterances, as many as the new ones; the LID
  # losses' prior counts the replayed utterances' languages.
  new_split, replayed = ungated.data.train_split.split("+")
  n_new = len(inputs.split_source(ungated, new_split))
  assert replayed == f"train[:{n_new}]"
  counts = transfer.utterance_languages(ungated, replayed)
  assert sum(counts.values()) == n_new and len(counts) > 1, counts
  assert set(counts) <= set(languages.LANGUAGE_CODES[:RU]), counts
  sizes = (int(ungated.model.num_languages), RU, int(ungated.transfer.old_num_languages))
  expected = transfer.mix_log_prior(*sizes, 0.5, old_counts=counts)
  np.testing.assert_allclose(ungated.train.loss.lid_log_prior, expected, atol=1e-12)
  # A new expert in both language-routed sections, Russian mapped to it.
  for name in ("encoder", "decoder"):
    assert cfg.model[name].num_experts == t.old_experts[name] + 1
    assert str(cfg.model[name].expert_map).split()[RU] == str(t.old_experts[name])

  run = runtime.build_run(cfg, workdir)
  saved = transfer.source_params(source)
  grown = {
    transfer._source_name(state_lib.path_name(p)): np.asarray(v)
    for p, v in jax.tree_util.tree_leaves_with_path(jax.device_get(run.state["model"]))
  }
  assert set(saved) <= set(grown)
  changed, language_slots = [], []
  init = languages.language_index(t.init_language)
  for name, old in saved.items():
    new = grown[name]
    index = tuple(slice(0, n) for n in old.shape)
    lid = re.fullmatch(transfer.LID_OUT, name)
    if lid or re.fullmatch(r"encoder/conditioners/\d+/(gamma|beta|embedding)", name):
      # Russian's LID class and conditioning (grown, or the source's never-trained ones)
      # start as the nearest language's, the LID bias `lid_margin` lower; the other
      # languages' are the source's.
      if lid:
        new, old = np.moveaxis(new, -1, 0), np.moveaxis(old, -1, 0)  # classes first
      np.testing.assert_array_equal(new[:RU], old[:RU])
      margin = t.lid_margin if lid and name.endswith("bias") else 0.0
      np.testing.assert_allclose(new[RU], old[init] - margin, rtol=0, atol=1e-5)
      language_slots.append(name)
      continue
    if name.startswith("task_heads/") and ("intent" in name or "slot" in name):
      # The language's heads (never trained in the source) start as the nearest language's.
      init = languages.language_index(t.init_language)
      np.testing.assert_array_equal(new[RU], old[init])
      keep = [i for i in range(old.shape[0]) if i != RU]
      np.testing.assert_array_equal(new[keep], old[keep])
      continue
    if not np.array_equal(new[index], old):
      changed.append(name)
  assert not changed, changed  # Every old parameter (and old LID class) bit-identical.
  # The frame LID's and the utterance LID's classes, the conditioners' rows.
  assert sum("lid" in n for n in language_slots) >= 2, language_slots
  assert any("conditioners" in n for n in language_slots), language_slots
  assert grown["ctc_head/kernel"].shape[1] == new_tok.vocab_size


def test_expert_transfer_from_8_devices_on_1(source, tiny_corpus, tmp_path):
  """Trains only the new parts; Russian reaches the new expert; the workdir restores,
  resumes exactly and transcribes alone."""
  data_dir, _, _ = tiny_corpus
  workdir = tmp_path / "ru"
  # The source's LID (4 steps) is near chance: the Russian class starts half a nat below the
  # nearest language's instead of the 4 meant for a confident LID, which 40 steps of
  # Russian do not overcome.
  args = [f"--config.{o}" for o in [*_overrides(data_dir, steps=40), "transfer.lid_margin=0.5"]]
  proc = _one_device_cli(
    "transfer", "--from", str(source), "--workdir", str(workdir), "--language", "ru",
    "--method", "expert", "--config.train.checkpoint_every=20", *args,
  )  # fmt: skip
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  report = json.loads((workdir / "transfer" / "report.json").read_text())
  assert set(report["transfer"]) == {"heldout_test", "test", "test_cs"}
  assert report["source"]["test"]["cer"] is not None
  assert report["change"]["test"]["cer"] is not None
  assert 0 < report["trained_share"] < 0.2, report["trained_share"]

  # Frozen parameters are bit-identical to the source's after training.
  cfg = score.workdir_config(workdir)
  saved = transfer.source_params(source)
  after = transfer.source_params(workdir)
  rules = transfer.slice_rules(cfg)
  moved = []
  init = languages.language_index(cfg.transfer.init_language)
  for name, old in saved.items():
    new = after[name][tuple(slice(0, n) for n in old.shape)]
    trained = transfer.trained_mask(name, old.shape, after[name].shape, cfg, rules)
    # Russian's never-trained language entries started as the nearest language's.
    if cfg.transfer.new_language == "yes":
      old = transfer.language_slot_from_nearest(name, old, RU, init, cfg)
    if not np.array_equal(new[~trained], old[~trained]):
      moved.append(name)
  assert not moved, moved
  assert not np.array_equal(after["ctc_head/kernel"][:, -1], saved["ctc_head/kernel"].mean(1))

  # Router statistics. The frame LID's Russian class is what 40 steps of Russian teach it:
  # at evaluation (the predicted language routes) the new expert is the one that receives
  # most Russian frames.
  new_report = json.loads((workdir / "transfer" / "transfer" / "new" / "report.json").read_text())
  load = new_report["splits"]["heldout_test"]["expert_load"]
  shares = np.asarray(load["by_language"]["ru"])  # [layers, experts]
  assert np.all(shares.argmax(-1) == shares.shape[-1] - 1), shares
  # The language router sends exactly the frames whose language is Russian to the new
  # expert: by the label where the language is known, by the frame LID's argmax otherwise;
  # frames of the old languages, their language known, never reach it.
  run = runtime.build_run(cfg, workdir, for_training=False)
  new_expert = cfg.model.encoder.num_experts - 1
  old_map = [int(e) for e in str(cfg.transfer.old_expert_maps.encoder).split()]
  known = _routing(run, "heldout_test", oracle_mix=1.0)
  ru = known["lang"] == RU
  assert ru.sum() > 0
  np.testing.assert_array_equal(known["load"][:, ru, new_expert], 1.0)
  predicted = _routing(run, "heldout_test", oracle_mix=0.0)
  valid = predicted["mask"]
  says_ru = predicted["lid"].argmax(-1) == RU
  routed = predicted["load"][:, valid, new_expert]  # [layers, valid frames]
  np.testing.assert_array_equal(routed, np.broadcast_to(says_ru[valid], routed.shape) * 1.0)
  old = _routing(run, "test", oracle_mix=1.0)
  labelled = old["lang"] >= 0
  assert labelled.sum() > 0 and not np.any(old["lang"] == RU)
  np.testing.assert_array_equal(old["load"][:, labelled, new_expert], 0.0)
  experts = np.asarray(old_map)[old["lang"][labelled]]
  for layer in old["load"][:, labelled]:  # [labelled frames, experts] per layer
    np.testing.assert_array_equal(layer.argmax(-1), experts)
  del run

  # Transcribes from a copy of the workdir alone (no dataset where the config says), with
  # the joint CTC/attention search over the grown vocabulary and the new experts.
  alone = tmp_path / "alone"
  shutil.copytree(workdir, alone)
  source_ds = inputs.split_source(cfg, "heldout_test")
  import soundfile as sf

  sf.write(tmp_path / "ru.wav", np.asarray(source_ds[0]["audio"]), 16000, subtype="PCM_16")
  moved_data = tmp_path / "no_data"
  proc = _one_device_cli(
    "transcribe", "--workdir", str(alone), f"--config.data.data_dir={moved_data}",
    "--config.decode.method=joint", "--config.decode.beam=2", str(tmp_path / "ru.wav"),
  )  # fmt: skip
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  line = json.loads(proc.stdout.strip().splitlines()[-1])
  assert "text" in line

  # Resumes exactly: 20 steps, then on to 40 from the step-20 checkpoint, matches 40 straight.
  resumed = tmp_path / "resumed"
  shutil.copytree(workdir, resumed)
  for step in sorted((resumed / "checkpoints").iterdir()):
    if step.name.isdigit() and int(step.name) > 20:
      shutil.rmtree(step)
  # The resumed run is compared by its parameters: its scoring is left out.
  proc = _one_device_cli(
    "transfer", "--from", str(source), "--workdir", str(resumed), "--language", "ru",
    "--method", "expert", "--config.train.checkpoint_every=20", *args,
    "--config.transfer.new_splits=()", "--config.transfer.old_splits=()",
  )  # fmt: skip
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  again = transfer.source_params(resumed)
  for name, value in after.items():
    np.testing.assert_array_equal(again[name], value, err_msg=name)


@pytest.fixture(scope="module")
def new_task(tmp_path_factory) -> pathlib.Path:
  """An English set with another intent set (two intents), as a local_manifest dataset."""
  import soundfile as sf

  from moe_asr.data.synth import tts

  root = tmp_path_factory.mktemp("new_task")
  phrases = {"dim_lights": ["dim the lights", "dim the lamp"], "stop_music": ["stop it", "stop"]}
  rows = {"train": [], "test": []}
  voices = {"train": [("m3", 150), ("f2", 180), ("m1", 200)], "test": [("m2", 170)]}
  for split, split_voices in voices.items():
    for intent, texts in phrases.items():
      for text in texts:
        for variant, rate in split_voices:
          name = f"{split}_{len(rows[split])}.wav"
          audio = tts.synthesize(text, "en", tts.Voice(variant, rate=rate, pitch=50))
          sf.write(root / name, audio, tts.SAMPLE_RATE, subtype="PCM_16")
          rows[split].append({"path": name, "text": text, "intent": intent, "language": "en"})
  for split, lines in rows.items():
    (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
  return root


def test_new_task_trains_and_scores(source, tiny_corpus, new_task, tmp_path):
  data_dir, _, _ = tiny_corpus
  proc = run_cli("data", "import", str(new_task), "--name", "newtask", "--data-dir", str(data_dir))
  assert proc.returncode == 0, proc.stdout + proc.stderr
  workdir = tmp_path / "task"
  # A decoding of its own: the source is scored with it too, not with the source's.
  decode = ["decode.method=ctc_beam", "decode.beam=2"]
  assert score.workdir_config(source).decode.method != "ctc_beam"
  args = [f"--config.{o}" for o in [*_overrides(data_dir, steps=20), *decode]]
  proc = _one_device_cli(
    "transfer", "--from", str(source), "--workdir", str(workdir), "--language", "en",
    "--data", "local_manifest/newtask", "--method", "expert", *args,
  )  # fmt: skip
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  cfg = score.workdir_config(workdir)
  assert cfg.transfer.new_language == "no"  # English: no new expert, no new LID class.
  assert cfg.model.encoder.num_experts == cfg.transfer.old_experts.encoder
  run_data = json.loads((workdir / "run_data.json").read_text())
  assert run_data["intents"] == ["dim_lights", "stop_music"]
  report = json.loads((workdir / "transfer" / "report.json").read_text())
  test = report["transfer"]["test"]
  assert test["intent_acc"] is not None  # The new heads are scored on the new set.
  for who in ("transfer", "source"):
    scored = json.loads((workdir / "transfer" / who / "new" / "report.json").read_text())
    assert (scored["decode"]["method"], scored["decode"]["beam"]) == ("ctc_beam", 2), who
  # The encoder is kept: every encoder parameter is the source's.
  saved = transfer.source_params(source)
  after = transfer.source_params(workdir)
  for name, old in saved.items():
    if name.startswith("encoder/"):
      np.testing.assert_array_equal(after[name], old, err_msg=name)
  # The intent head is of the new set: two intents.
  assert after["task_heads/intent_kernel"].shape[-1] == 2
