"""`moe-asr transcribe`: files of any format in, one JSON record per file out, bad files named."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import soundfile as sf

from moe_asr import transcribe
from moe_asr.data import audio_io, pipeline
from moe_asr.data import languages as langs_lib
from moe_asr.decoding import confidence as confidence_lib
from moe_asr.evaluation import evaluate, score
from moe_asr.training import inputs

pytestmark = pytest.mark.slow

RECORD_KEYS = {
  "file",
  "text",
  "language",
  "language_confidence",
  "words",
  "intent",
  "intent_confidence",
  "slots",
  "confidence",
  "deferred",
  "duration_s",
  "speech",
}
WORD_KEYS = {"word", "language", "start", "end", "confidence"}


def _parse(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="moe-asr")
  transcribe.add_parser(parser.add_subparsers(dest="command", required=True))
  return parser.parse_args(argv)


@pytest.fixture(scope="module")
def run_data(tiny_workdir):
  return inputs.load_run_data(score.workdir_config(tiny_workdir), tiny_workdir)


@pytest.fixture(scope="module")
def audio_files(tiny_workdir, tmp_path_factory):
  """Good files (16 kHz mono int16 wav, 8 kHz stereo float flac) and bad ones."""
  cfg = score.workdir_config(tiny_workdir)
  source = inputs.split_source(cfg, "test")
  d = tmp_path_factory.mktemp("audio")
  waves = []
  for i in range(len(source)):
    wave = np.asarray(source[i]["audio"], np.int16)
    if len(wave) < 3 * 16000:  # The tiny run's only bucket is 3 s.
      waves.append(wave)
    if len(waves) == 2:
      break
  files = {}
  files["mono"] = d / "mono.wav"
  sf.write(files["mono"], waves[0], 16000, subtype="PCM_16")
  # 8 kHz stereo: the second channel is quieter, so the mix is not just a copy.
  low = audio_io.resample(waves[1].astype(np.float32) / 32768.0, 16000, 8000)
  files["stereo"] = d / "stereo_8k.flac"
  sf.write(files["stereo"], np.stack([low, 0.5 * low], axis=1), 8000, subtype="PCM_16")
  files["corrupt"] = d / "corrupt.wav"
  files["corrupt"].write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage" * 4)
  files["empty"] = d / "empty.wav"
  files["empty"].write_bytes(b"")
  files["nan"] = d / "nan.wav"
  bad = np.zeros(1600, np.float32)
  bad[100] = np.nan
  sf.write(files["nan"], bad, 16000, subtype="FLOAT")
  files["long"] = d / "long.wav"
  sf.write(files["long"], np.tile(waves[0], 3)[: 4 * 16000], 16000, subtype="PCM_16")
  durations = {"mono": len(waves[0]) / 16000, "stereo": len(waves[1]) / 16000}
  return {k: str(v) for k, v in files.items()}, durations


def _check_record(rec: dict, duration: float, *, aligned: bool) -> None:
  assert set(rec) == RECORD_KEYS and rec["speech"] is True, rec
  assert rec["language"] in langs_lib.LANGUAGE_CODES
  assert 0.0 < rec["language_confidence"] <= 1.0
  assert 0.0 <= rec["confidence"] <= 1.0
  assert rec["deferred"] is False  # The tiny run has no calibration.
  assert rec["duration_s"] == pytest.approx(duration, abs=2e-3)
  assert isinstance(rec["intent"], str) and 0.0 < rec["intent_confidence"] <= 1.0
  assert all(set(s) == {"type", "value"} for s in rec["slots"])
  if rec["text"]:
    assert rec["words"], rec
  previous_end = 0.0
  for w in rec["words"]:
    assert set(w) == WORD_KEYS and w["word"]
    assert w["language"] in langs_lib.LANGUAGE_CODES
    if aligned:
      assert previous_end - 1e-9 <= w["start"] <= w["end"] <= duration + 1e-9, rec["words"]
      assert previous_end == 0.0 or w["start"] == pytest.approx(previous_end)
      previous_end = w["end"]
      assert 0.0 <= w["confidence"] <= 1.0


def test_transcribe_greedy_good_and_bad_files(tiny_workdir, audio_files, tmp_path, capsys):
  files, durations = audio_files
  order = ["corrupt", "mono", "empty", "stereo", "nan", "long"]
  out_file = tmp_path / "out" / "records.jsonl"
  args = _parse(
    ["transcribe", "--workdir", str(tiny_workdir), *[files[k] for k in order]]
    + ["--method", "greedy", "--output", str(out_file)]
  )
  assert args.func is transcribe.run_command
  code = args.func(args, ["--config.decode.beam=3"])
  assert code == 1  # Some files failed.
  captured = capsys.readouterr()
  lines = captured.out.strip().splitlines()
  assert out_file.read_text().splitlines() == lines
  records = [json.loads(line) for line in lines]
  assert [r["file"] for r in records] == [files[k] for k in order]
  for name, rec in zip(order, records, strict=True):
    if name == "long":
      continue
    if name in durations:
      _check_record(rec, durations[name], aligned=True)
    else:
      assert set(rec) == {"file", "error"}, rec
      assert files[name] in rec["error"]
      assert files[name] in captured.err
  assert "zero samples" in records[2]["error"] or "cannot be read" in records[2]["error"]
  assert "NaN" in records[4]["error"]
  # Longer than the 3 s bucket: decoded in windows, its words in the file's timeline.
  long = records[5]
  assert set(long) == RECORD_KEYS | {"segments", "language_segments"}, long
  assert long["speech"] is True and long["duration_s"] == pytest.approx(4.0, abs=2e-3)
  assert len(long["segments"]) >= 2
  assert all(0.0 <= s["start"] < s["end"] <= 4.0 + 1e-9 for s in long["segments"])
  assert all(0.0 <= w["start"] <= w["end"] <= 4.0 + 1e-9 for w in long["words"])


def test_transcribe_ctc_beam_and_exit_code(tiny_workdir, audio_files, capsys, monkeypatch):
  files, durations = audio_files
  monkeypatch.chdir(tiny_workdir.parent)  # A relative workdir, as `--workdir runs/demo`.
  args = _parse(
    ["transcribe", "--workdir", tiny_workdir.name, files["stereo"], files["mono"]]
    + ["--method", "ctc_beam", "--beam", "4"]
  )
  assert args.func(args, []) == 0
  records = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
  assert [r["file"] for r in records] == [files["stereo"], files["mono"]]
  for key, rec in zip(("stereo", "mono"), records, strict=True):
    _check_record(rec, durations[key], aligned=True)


def test_unknown_override_is_refused_before_decoding(tiny_workdir, audio_files):
  files, _ = audio_files
  with pytest.raises(KeyError, match="no_such_key"):
    transcribe.transcribe_files(
      tiny_workdir, [files["mono"]], overrides=["--config.decode.no_such_key=1"]
    )


def test_slot_spans_read_each_words_last_token(run_data):
  tok = run_data.tokenizer
  pieces = [tok.encode(w) for w in ["la", "xyzzy", "pas", "xyzzy"]]
  assert len(pieces[1]) >= 2 and len(pieces[2]) >= 1
  names = ("O", "B-song", "I-song", "B-city", "I-city")
  o, b_song, i_song, b_city = 0, 1, 2, 3
  tags = [
    [o] * len(pieces[0]),
    [b_city] * (len(pieces[1]) - 1) + [b_song],  # Flicker inside the word: its last token wins.
    [o] * (len(pieces[2]) - 1) + [i_song],  # Continues the span.
    [b_city] + [o] * (len(pieces[3]) - 1),  # B on a first token only: not a slot.
  ]
  tokens = np.array(sum(pieces, []) + [tok.eos_id])
  tags = np.array(sum(tags, []) + [b_city])  # The eos is no word.
  spans = evaluate.slot_spans(tokens, tags, names, tok)
  assert spans == (("song", "xyzzy pas"),)


def test_words_from_tokens_hand_computed(run_data):
  tok = run_data.tokenizer
  words = ["la", "pas", "xyzzy"]
  pieces = [tok.encode(w) for w in words]
  assert len(pieces[2]) >= 2  # An unseen word needs several pieces.
  en = tok.language_tag_id("en")
  # A language tag between words and an eos at the end make no words.
  tokens = pieces[0] + [en] + pieces[1] + pieces[2] + [tok.eos_id]
  n = len(tokens)
  frames = np.arange(n) * 2 + 1  # Token k emitted at encoder frame 2k + 1.
  conf = np.linspace(0.9, 0.3, n)
  fr, de = langs_lib.language_index("fr"), langs_lib.language_index("de")
  langs = np.full(n, fr)
  third = len(pieces[0]) + 1 + len(pieces[1])  # First token of "xyzzy".
  langs[third : third + len(pieces[2]) - 1] = de  # All but its last token: majority de.
  spf, duration = 0.04, 10.0
  out = transcribe.words_from_tokens(
    tokens,
    conf,
    frames,
    langs,
    tok,
    duration_s=duration,
    seconds_per_frame=spf,
    default_language="en",
  )
  assert [w["word"] for w in out] == words
  firsts = [0, len(pieces[0]) + 1, third]
  lasts = [len(pieces[0]) - 1, third - 1, third + len(pieces[2]) - 1]
  for w, (first, last) in enumerate(zip(firsts, lasts, strict=True)):
    assert out[w]["start"] == pytest.approx(round(frames[first] * spf, 3))
    assert out[w]["confidence"] == pytest.approx(conf[last], rel=1e-6)  # conf falls: min = last.
  assert out[0]["end"] == out[1]["start"] and out[1]["end"] == out[2]["start"]
  assert out[2]["end"] == pytest.approx(out[2]["start"] + spf * len(pieces[2]))
  assert [w["language"] for w in out] == ["fr", "fr", "de"]

  # The last word's end is capped at the duration.
  short = transcribe.words_from_tokens(
    tokens, conf, frames, langs, tok, duration_s=0.05, seconds_per_frame=spf, default_language="en"
  )
  assert short[-1]["end"] == pytest.approx(0.05)

  # Unknown frames (joint search): no times, no confidence; unknown languages take the default.
  blind = transcribe.words_from_tokens(
    tokens,
    np.zeros(n),
    np.full(n, -1),
    np.full(n, -1),
    tok,
    duration_s=duration,
    seconds_per_frame=spf,
    default_language="es",
  )
  assert [w["word"] for w in blind] == words
  assert all(w["start"] is None and w["end"] is None and w["confidence"] is None for w in blind)
  assert all(w["language"] == "es" for w in blind)

  # A calibration maps the word confidence through its Platt scaling.
  cal = confidence_lib.Calibration(word=(2.0, 0.5))
  calibrated = transcribe.words_from_tokens(
    tokens,
    conf,
    frames,
    langs,
    tok,
    duration_s=duration,
    seconds_per_frame=spf,
    default_language="en",
    calibration=cal,
  )
  p = conf[lasts[0]]
  expected = 1.0 / (1.0 + math.exp(-(2.0 * math.log(p / (1.0 - p)) + 0.5)))
  assert calibrated[0]["confidence"] == pytest.approx(expected, rel=1e-6)
  assert (
    transcribe.words_from_tokens(
      [tok.eos_id, en],
      [1.0, 1.0],
      [0, 1],
      [0, 0],
      tok,
      duration_s=1.0,
      seconds_per_frame=spf,
      default_language="en",
    )
    == []
  )


def test_bucket_batches_smallest_bucket_and_batch_size():
  buckets = pipeline.make_buckets(pipeline.PipelineConfig(buckets=((1.0, 2), (2.0, 4))))
  lengths = {0: 16000, 1: 16001, 2: 100, 3: 32000, 4: 5, 5: 8000}
  batches = transcribe._bucket_batches(lengths, buckets)
  assert [(b.max_samples, m) for b, m in batches] == [
    (16000, [0, 2]),
    (16000, [4, 5]),
    (32000, [1, 3]),
  ]


def test_record_from_row_calibration_and_slots(run_data):
  tok, vocab = run_data.tokenizer, run_data.vocab
  ids = tok.encode("pas") + tok.encode("la")
  n, width = len(ids), len(ids) + 3
  tokens = np.zeros((2, width), np.int32)
  tokens[1, :n] = ids
  slot_tags = np.zeros((2, width), np.int32)
  slot_type = vocab.slot_types[0]
  slot_tags[1, len(tok.encode("pas")) : n] = vocab.slot_tags.index("B-" + slot_type)
  slot_tags[1, len(tok.encode("pas")) + 1 : n] = vocab.slot_tags.index("I-" + slot_type)
  num_langs, num_intents = len(langs_lib.LANGUAGE_CODES), len(vocab.intents)
  lid = np.zeros((2, num_langs), np.float32)
  lid[1, 2] = 1.0  # Language index 2 wins.
  intent_lp = np.log(np.full((2, num_intents), 0.5 / (num_intents - 1), np.float32))
  intent_lp[1, 3] = np.log(0.5)
  out = {
    "tokens": tokens,
    "lengths": np.array([0, n], np.int32),
    "confidence": np.array([0.0, 0.8], np.float32),
    "token_conf": np.full((2, width), 0.7, np.float32),
    "token_frames": np.tile(np.arange(width, dtype=np.int32) * 3, (2, 1)),
    "token_lang": np.full((2, width), 2, np.int32),
    "utt_lid_logits": lid,
    "intent_log_probs": intent_lp,
    "slot_tags": slot_tags,
  }
  common = dict(name="x.wav", duration_s=2.0, run_data=run_data, seconds_per_frame=0.04)
  rec = transcribe.record_from_row(out, 1, **common)
  assert rec["text"] == "pas la" and [w["word"] for w in rec["words"]] == ["pas", "la"]
  assert rec["language"] == langs_lib.LANGUAGE_CODES[2]
  e = math.e
  assert rec["language_confidence"] == pytest.approx(e / (e + num_langs - 1), rel=1e-6)
  assert rec["intent"] == vocab.intents[3] and rec["intent_confidence"] == pytest.approx(0.5)
  assert rec["slots"] == [{"type": slot_type, "value": "la"}]
  assert rec["confidence"] == pytest.approx(0.8) and rec["deferred"] is False
  assert rec["duration_s"] == 2.0

  cal = confidence_lib.Calibration(
    intent_temperature=2.0, lid_temperature=0.5, utterance=(1.0, 1.0), defer_threshold=0.95
  )
  rec = transcribe.record_from_row(out, 1, calibration=cal, **common)
  e2 = math.exp(2.0)  # LID logits / 0.5.
  assert rec["language_confidence"] == pytest.approx(e2 / (e2 + num_langs - 1), rel=1e-6)
  # Intent probabilities ^ (1 / 2), renormalised.
  top, rest = math.sqrt(0.5), math.sqrt(0.5 / (num_intents - 1))
  assert rec["intent_confidence"] == pytest.approx(top / (top + (num_intents - 1) * rest), 1e-5)
  calibrated = 1.0 / (1.0 + math.exp(-(math.log(0.8 / 0.2) + 1.0)))  # 0.9158 < 0.95.
  assert rec["confidence"] == pytest.approx(calibrated, rel=1e-6) and rec["deferred"] is True
  empty = transcribe.record_from_row(out, 0, **common)
  assert empty["text"] == "" and empty["words"] == [] and empty["slots"] == []


def test_transcribe_from_the_workdir_alone(tiny_workdir, audio_files, run_data, tmp_path, capsys):
  """Training keeps the data side in the workdir; transcribe works where no dataset is."""
  import shutil

  assert (tiny_workdir / inputs.RUN_DATA_FILE).exists()
  moved = tmp_path / "run"
  shutil.copytree(tiny_workdir, moved)
  elsewhere = [f"--config.data.data_dir={tmp_path / 'no_data_here'}"]
  alone = inputs.load_run_data(score.workdir_config(moved, elsewhere), moved)
  assert alone.tokenizer.to_bytes() == run_data.tokenizer.to_bytes()
  assert alone.vocab == run_data.vocab and alone.num_intents > 0
  assert alone.metadata["bias_phrases"] == run_data.metadata["bias_phrases"]

  files, durations = audio_files
  args = _parse(["transcribe", "--workdir", str(moved), files["mono"], "--method", "greedy"])
  assert args.func(args, elsewhere) == 0
  (record,) = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
  _check_record(record, durations["mono"], aligned=True)
  assert record["intent"] in run_data.vocab.intents

  (moved / inputs.RUN_DATA_FILE).unlink()  # Neither dataset nor snapshot: the clear error.
  with pytest.raises(FileNotFoundError, match="not built"):
    inputs.load_run_data(score.workdir_config(moved, elsewhere), moved)
