"""The embedded corpus, built by `moe-asr corpus build` and read through TFDS."""

import collections
import json

import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import TINY_CONFIG, run_cli

import moe_asr.data.builders  # noqa: F401  (registers moe_asr_synth)
from moe_asr import config_lib
from moe_asr.data import languages as langs_lib
from moe_asr.data import pipeline as pl
from moe_asr.data import text as text_lib
from moe_asr.data.builders import synth
from moe_asr.data.synth import corpus, grammar
from moe_asr.data.tokenizer import Tokenizer

CFG = config_lib.load_config(TINY_CONFIG)


def _s(x) -> str:
  return x.decode() if isinstance(x, bytes) else str(x)


@pytest.fixture(scope="module")
def builder(tiny_corpus):
  data_dir, _, _ = tiny_corpus
  return tfds.builder("moe_asr_synth/tiny", data_dir=str(data_dir))


@pytest.fixture(scope="module")
def splits(builder):
  return {name: list(builder.as_data_source(split=name)) for name in builder.info.splits}


def test_build_makes_every_split(builder, splits, tiny_corpus):
  _, _, stdout = tiny_corpus
  assert "Built moe_asr_synth/tiny" in stdout
  for name in corpus.SPLITS:
    assert len(splits[name]) == CFG.splits[name], name


def test_audio_is_16k_int16_and_not_silent(splits):
  for name, examples in splits.items():
    for ex in examples:
      audio = np.asarray(ex["audio"])
      assert audio.dtype == np.int16 and audio.ndim == 1, name
      seconds = len(audio) / 16000
      assert 0.3 < seconds <= CFG.max_seconds, (name, _s(ex["id"]), seconds)
      rms = np.sqrt(np.mean(audio.astype(np.float64) ** 2))
      assert rms > 300, (name, _s(ex["id"]), rms)  # About -40 dBFS.


def test_labels_are_consistent(splits):
  for examples in splits.values():
    for ex in examples:
      text = _s(ex["text"])
      words = text.split()
      assert text and text_lib.normalize(text) == text
      words_lang = [_s(w) for w in ex["words_lang"]]
      assert len(words_lang) == len(words)
      distinct = set(words_lang)
      assert _s(ex["language"]) == (langs_lib.MIXED if len(distinct) > 1 else words_lang[0])
      assert _s(ex["intent"]) in grammar.INTENTS
      for slot_type, value in zip(ex["slots"]["type"], ex["slots"]["value"], strict=True):
        assert _s(slot_type) in grammar.SLOT_TYPES
        assert f" {_s(value)} " in f" {text} "


def test_segments_tile_and_agree_with_word_languages(splits):
  checked_cs = 0
  for examples in splits.values():
    for ex in examples:
      seg = np.asarray(ex["segments"])
      n = len(ex["audio"])
      assert seg.shape[1] == 3 and len(seg) >= 1
      assert seg[0, 0] == 0 and seg[-1, 1] == n
      np.testing.assert_array_equal(seg[1:, 0], seg[:-1, 1])
      assert (seg[:, 1] > seg[:, 0]).all()
      words_lang = [_s(w) for w in ex["words_lang"]]
      runs = [w for i, w in enumerate(words_lang) if i == 0 or w != words_lang[i - 1]]
      assert [langs_lib.LANGUAGE_CODES[i] for i in seg[:, 2]] == runs
      checked_cs += len(runs) > 1
  assert checked_cs >= CFG.splits.test_cs


def test_test_voices_are_unseen(splits):
  def variants(names):
    return {_s(ex["speaker"]).rsplit("-r", 1)[0] for n in names for ex in splits[n]}

  seen = variants(["train", "validation", "unlabeled", "heldout_train"])
  unseen = variants(["test", "test_cs", "test_noisy", "test_bias", "heldout_test"])
  assert seen and unseen and not seen & unseen
  assert seen <= set(CFG.voices.train_variants) and unseen <= set(CFG.voices.test_variants)


def test_heldout_language_only_in_heldout_splits(splits):
  held = CFG.heldout_language
  for name, examples in splits.items():
    langs = {_s(w) for ex in examples for w in ex["words_lang"]}
    if name.startswith("heldout"):
      assert langs == {held}
    else:
      assert held not in langs, name


def test_every_language_intent_and_pair_present(splits):
  langs = collections.Counter(_s(ex["language"]) for ex in splits["test"])
  assert set(langs) == set(CFG.languages)
  intents = {_s(ex["intent"]) for n in ("train", "test", "test_cs") for ex in splits[n]}
  assert intents == set(grammar.INTENTS)
  pairs = {tuple(dict.fromkeys(_s(w) for w in ex["words_lang"])) for ex in splits["test_cs"]}
  assert {tuple(p) for p in CFG.code_switch_pairs} <= pairs
  assert all(_s(ex["language"]) == langs_lib.MIXED for ex in splits["test_cs"])
  cs_train = np.mean([_s(ex["language"]) == langs_lib.MIXED for ex in splits["train"]])
  assert 0.1 < cs_train < 0.45  # code_switch_fraction is 0.25.


def test_noise_levels(splits):
  snrs = collections.Counter(float(ex["snr_db"]) for ex in splits["test_noisy"])
  assert set(snrs) == set(CFG.noisy_snrs_db)
  assert all(np.isinf(ex["snr_db"]) for n in ("test", "test_cs") for ex in splits[n])


def test_bias_phrases_are_rare_in_train(builder, splits):
  meta = builder.info.metadata
  phrases = set(meta["bias_phrases"])
  assert len(phrases) >= len(CFG.languages) * CFG.bias_entities_per_language // 2
  entities = [tuple(e) for e in meta["bias_entities"]]
  train_counts = collections.Counter(
    _s(v) for ex in splits["train"] for v in ex["slots"]["value"] if _s(v) in phrases
  )
  per_phrase = collections.Counter(v for _, _, v in entities)
  for phrase, count in train_counts.items():
    assert count <= CFG.bias_max_train_count * per_phrase[phrase], phrase
  for ex in splits["test_bias"]:  # Every test_bias utterance holds one.
    values = {
      (_s(t), _s(v)) for t, v in zip(ex["slots"]["type"], ex["slots"]["value"], strict=True)
    }
    assert any((t, v) in values for _, t, v in entities), _s(ex["text"])
  for ex in splits["validation"] + splits["unlabeled"]:
    assert not phrases & {_s(v) for v in ex["slots"]["value"]}


def test_corpus_is_deterministic(splits):
  # Regenerating examples in this process gives the bytes the build wrote.
  for name, index in [("train", 3), ("test_cs", 1), ("test_noisy", 5), ("test_bias", 2)]:
    ex = corpus.generate_example(CFG, name, index)
    built = splits[name][index]
    np.testing.assert_array_equal(ex["audio"], built["audio"])
    assert ex["text"] == _s(built["text"]) and ex["speaker"] == _s(built["speaker"])
    np.testing.assert_array_equal(ex["segments"], built["segments"])
  other = config_lib.load_config(TINY_CONFIG, ["seed=1"])
  reseeded = corpus.generate_example(other, "train", 3)
  assert not np.array_equal(reseeded["audio"], splits["train"][3]["audio"])


def test_tokenizer_saved_beside_the_data(builder, splits):
  tok = Tokenizer.load(synth.tokenizer_path(builder))
  for ex in splits["train"][:20] + splits["test_cs"][:10]:
    text = _s(ex["text"])
    ids = tok.encode(text)
    assert tok.unk_id not in ids
    assert tok.decode(ids) == text
  for code in CFG.languages:
    assert tok.decode([tok.language_tag_id(code)], keep_symbols=True) == f"<{code}>"


def test_the_data_source_reads_what_tfds_decodes(splits, tiny_corpus):
  # data_source reads the raw int16 audio tensor without TFDS's decoding: the same examples.
  data_dir, _, _ = tiny_corpus
  for split in ("train", "test_cs"):
    ours = pl.data_source("moe_asr_synth/tiny", split, data_dir=str(data_dir))
    assert len(ours) == len(splits[split])
    for i, ref in enumerate(splits[split]):
      ex = ours[i]
      assert sorted(ex) == sorted(ref)
      assert ex["audio"].dtype == np.int16
      np.testing.assert_array_equal(ex["audio"], ref["audio"], err_msg=f"{split}[{i}]")
      np.testing.assert_array_equal(ex["segments"], ref["segments"])
      for key in ("text", "words_lang", "language", "intent", "speaker", "id", "snr_db"):
        assert str(ex[key]) == str(ref[key]), (split, i, key)
      assert str(ex["slots"]) == str(ref["slots"])


def test_pipeline_reads_the_corpus(builder, tiny_corpus):
  data_dir, _, _ = tiny_corpus
  tok = Tokenizer.load(synth.tokenizer_path(builder))
  source = pl.data_source("moe_asr_synth/tiny", "test_cs", data_dir=str(data_dir))
  cfg = pl.PipelineConfig(
    buckets=((4.0, 4), (8.0, 4), (12.0, 2)),
    shuffle=False,
    drop_remainder=False,
    num_epochs=1,
    num_threads=1,
  )
  p = pl.Pipeline(source, cfg, tokenizer=tok, process_index=0, process_count=1)
  rows = 0
  for batch in p:
    mask = batch["example_mask"]
    rows += mask.sum()
    assert batch["code_switched"][mask].all()
    assert (batch["intent"][mask] >= 0).all()
    assert (batch["frame_lang"][mask][:, 0] >= 0).all()
  assert rows == CFG.splits.test_cs
  assert p.stats == {}


def test_a_run_can_train_its_own_tokenizer(builder, splits, tiny_corpus, tmp_path):
  """`data.vocab_size` trains a tokenizer for the run, kept in (and reused from) the workdir."""
  from moe_asr.configs import tiny
  from moe_asr.training import inputs

  data_dir, _, _ = tiny_corpus
  cfg = tiny.get_config()
  cfg.data.data_dir = str(data_dir)
  corpus_tok = synth.tokenizer_path(builder)
  assert inputs.load_run_data(cfg, tmp_path / "a").tokenizer.to_bytes() == corpus_tok.read_bytes()
  assert not (tmp_path / "a").exists()

  texts = [_s(ex["text"]) for ex in splits["train"]]
  cfg.data.vocab_size = 500
  cfg.data.character_coverage = 1.0
  own = inputs.load_run_data(cfg, tmp_path / "b").tokenizer
  assert own.vocab_size == 500
  assert (tmp_path / "b" / "tokenizer.model").read_bytes() == own.to_bytes()
  assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["tokenizer.model"]
  # Full coverage: every character of the train text is a piece (no byte fallback).
  byte_ids = {own.piece_to_id(f"<0x{b:02X}>") for b in range(256)}
  for text in texts:
    ids = own.encode(text)
    assert not byte_ids & set(ids), text
    assert own.decode(ids) == text
  # The run's tokenizer wins later (resume, eval, transcribe), whatever vocab_size says.
  cfg.data.vocab_size = 0
  again = inputs.load_run_data(cfg, tmp_path / "b").tokenizer
  assert again.to_bytes() == own.to_bytes()


def test_config_change_is_detected(tiny_corpus, tmp_path):
  data_dir, _, _ = tiny_corpus
  with pytest.raises(ValueError, match="differs from it"):
    synth.builder_from_config_file(TINY_CONFIG, data_dir, ["seed=5"])


def test_stats_cli(tiny_corpus, tmp_path):
  data_dir, _, _ = tiny_corpus
  out = tmp_path / "stats.json"
  proc = run_cli(
    "corpus",
    "stats",
    "--data-dir",
    str(data_dir),
    "--name",
    "moe_asr_synth/tiny",
    "--json",
    str(out),
  )
  assert proc.returncode == 0, proc.stderr
  for word in (
    "split",
    "hours",
    "speakers",
    "cs_frac",
    "test_cs",
    "mixed",
    "play_music",
    "Bias phrases",
  ):
    assert word in proc.stdout
  stats = json.loads(out.read_text())
  assert stats["splits"]["test"]["utterances"] == CFG.splits.test
  assert stats["splits"]["test_cs"]["code_switched"] == CFG.splits.test_cs
  assert stats["bias_phrases"] > 0
