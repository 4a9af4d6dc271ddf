"""`moe-asr eval` scores utterances longer than the last bucket in windows (issue 32)."""

import json

import numpy as np
import pytest

from moe_asr.data import pipeline as pipeline_lib
from moe_asr.data import schema


def _source(seconds: list[float]) -> list[dict]:
  rng = np.random.default_rng(0)
  return [
    {
      "id": f"u{i}".encode(),
      "audio": rng.integers(-1000, 1000, int(s * schema.SAMPLE_RATE)).astype(np.int16),
      "text": b"hello there",
    }
    for i, s in enumerate(seconds)
  ]


@pytest.mark.parametrize("train", [False, True])
def test_window_policy_lists_long_utterances_for_evaluation_and_skips_them_in_training(train):
  seconds = [1.0, 3.5, 1.5, 5.0, 0.5, 2.0, 1.2, 0.8]
  source = _source(seconds)
  cfg = pipeline_lib.PipelineConfig(
    buckets=((2.0, 2),),
    long_policy="window",
    shuffle=train,
    drop_remainder=train,
    num_epochs=1,
    num_threads=0,
    prefetch=0,
  )
  p = pipeline_lib.Pipeline(source, cfg, process_index=0, process_count=1)
  loaded = {int(i) for b in iter(p) for i in b["index"][b["example_mask"]]}
  long = {1, 3}
  assert loaded.isdisjoint(long)  # Never cut into a bucket, under either use.
  assert p.plan_stats["too_long"] == 2
  if train:
    assert p.long_examples.tolist() == []  # Training skips them, as under "skip".
    assert loaded <= set(range(len(seconds))) - long
  else:
    assert p.long_examples.tolist() == sorted(long)
    assert loaded == set(range(len(seconds))) - long
  empty = p.empty_batch(0)
  assert empty["audio"].shape == (2, 2 * schema.SAMPLE_RATE) and not empty["example_mask"].any()
  with pytest.raises(ValueError, match="long_policy"):
    pipeline_lib.assign_buckets(np.asarray([1]), p.buckets, "drop")
  # Every utterance over the last bucket: no batch, all of them in windows (training: an
  # empty plan is an error).
  only_long = [source[1], source[3]]
  if train:
    with pytest.raises(ValueError, match="plan is empty"):
      pipeline_lib.Pipeline(only_long, cfg, process_index=0, process_count=1)
  else:
    p = pipeline_lib.Pipeline(only_long, cfg, process_index=0, process_count=1)
    assert list(iter(p)) == [] and p.long_examples.tolist() == [0, 1]


@pytest.mark.slow
def test_eval_scores_utterances_over_the_last_bucket_in_windows(tiny_workdir, tmp_path):
  from moe_asr.data import text as text_lib
  from moe_asr.evaluation import score
  from moe_asr.training import inputs

  cfg = score.workdir_config(tiny_workdir)
  assert cfg.eval.long_policy == "window"  # The default of `moe-asr eval`.
  last = float(cfg.data.buckets[-1][0])
  source = inputs.split_source(cfg, "test")
  examples = [source[i] for i in range(len(source))]
  long = {
    pipeline_lib.as_str(ex["id"]): ex
    for ex in examples
    if len(ex["audio"]) > last * schema.SAMPLE_RATE
  }
  assert long, f"the tiny test split has no utterance over {last} s"

  out = tmp_path / "eval"
  report = score.evaluate_workdir(
    tiny_workdir, splits=("test",), out_dir=out, overrides=("eval.plots=False",)
  )
  split = report["splits"]["test"]
  assert split["long_form"]["utterances"] == len(long)
  assert split["long_form"]["windows"] >= len(long)
  assert "skipped_too_long" not in split["skipped"]
  hyps = {
    h["id"]: h
    for h in map(json.loads, (out / "hypotheses" / "test.jsonl").read_text().splitlines())
  }
  skipped = sum(n for k, n in split["skipped"].items() if k.startswith("skipped_"))
  assert len(hyps) == len(examples) - skipped == split["n"]
  for uid, ex in long.items():  # Scored against the full reference.
    h = hyps[uid]
    assert h["ref_text"] == pipeline_lib.as_str(ex["text"])
    assert h["duration_s"] == pytest.approx(len(ex["audio"]) / schema.SAMPLE_RATE, abs=1e-6)
    assert h["duration_s"] > last
    assert h["hyp_text"] == text_lib.normalize(h["hyp_text"])
  # The split's audio seconds count the windowed utterances whole.
  total = sum(len(ex["audio"]) for ex in examples) / schema.SAMPLE_RATE
  assert sum(h["duration_s"] for h in hyps.values()) == pytest.approx(total, rel=1e-6)


# --- Windowed scoring with a stand-in recognizer: every word is a run of one sample value.

_WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliett kilo lima".split()
_WORD, _GAP = 6400, 1600  # 0.4 s words, 0.1 s gaps: too short a pause to cut in.
_CTC_FRAME = 640  # Samples per CTC frame (0.04 s).


class _Tokenizer:
  """One token per word: id i is `_WORDS[i]`."""

  def word_spans(self, tokens):
    return [[p] for p in range(len(tokens))]

  def decode(self, ids):
    return " ".join(_WORDS[i] for i in ids)


def _utterance(uid: str, words: list[int], lead: int = 0, tail: int = 0) -> dict:
  pieces = [np.zeros(lead, np.int16)]
  for w in words:
    pieces += [np.full(_WORD, 1000 + 100 * w, np.int16), np.zeros(_GAP, np.int16)]
  pieces.append(np.zeros(tail, np.int16))
  return {
    "id": uid.encode(),
    "audio": np.concatenate(pieces),
    "text": " ".join(_WORDS[w] for w in words).encode(),
    "language": b"es",
    "intent": b"play",
  }


def _recognize(batch, seen: list) -> dict:
  """The step's outputs of a perfect recognizer: a word wherever half its run is heard."""
  rows, width = batch["audio"].shape
  seen.append((rows, width))
  out = {
    "example_mask": batch["example_mask"].copy(),
    "index": batch["index"].copy(),
    "lengths": np.zeros(rows, np.int32),
    "tokens": np.zeros((rows, 16), np.int32),
    "token_conf": np.full((rows, 16), 0.9, np.float32),
    "token_frames": np.full((rows, 16), -1, np.int32),
    "token_lang": np.full((rows, 16), -1, np.int32),
    "confidence": np.full(rows, 0.75, np.float32),
    "utt_lid_logits": np.tile(np.asarray([0.0, 3.0, 0.0], np.float32), (rows, 1)),
    "intent_log_probs": np.tile(np.log(np.asarray([0.8, 0.2], np.float32)), (rows, 1)),
    "slot_tags": np.zeros((rows, 16), np.int32),
  }
  for r in np.flatnonzero(batch["example_mask"]):
    audio = batch["audio"][r] * batch["audio_mask"][r]
    edges = np.flatnonzero(np.diff(np.concatenate([[0], audio, [0]])))
    n = 0
    for a, b in zip(edges[:-1], edges[1:], strict=True):
      if audio[a] != 0 and b - a >= _WORD // 2:
        out["tokens"][r, n] = (int(audio[a]) - 1000) // 100
        out["token_frames"][r, n] = a // _CTC_FRAME
        n += 1
    out["lengths"][r] = n
  return out


def test_windowed_utterances_are_stitched_and_scored_against_the_full_reference(monkeypatch):
  from moe_asr.data import vad
  from moe_asr.decoding import confidence as confidence_lib
  from moe_asr.evaluation import evaluate
  from moe_asr.evaluation import metrics as metrics_lib

  # The stand-in VAD: a frame is speech where any sample is not zero.
  monkeypatch.setattr(
    vad,
    "speech_mask",
    lambda wave: np.asarray(
      [np.any(wave[i : i + vad.FRAME_SAMPLES]) for i in range(0, len(wave), vad.FRAME_SAMPLES)]
    ),
  )
  source = [
    _utterance("continuous", list(range(12))),  # 6 s of speech, no pause: hard cuts.
    _utterance("one_window", [3, 4, 5], lead=4800, tail=12800),  # 2.6 s, 1.5 s of speech.
    {**_utterance("silent", []), "audio": np.zeros(48000, np.int16)},
    _utterance("short", [1]),  # 0.5 s: a bucket takes it.
  ]
  cfg = pipeline_lib.PipelineConfig(
    buckets=((1.0, 2), (2.0, 2)),
    long_policy="window",
    shuffle=False,
    drop_remainder=False,
    num_epochs=1,
  )
  p = pipeline_lib.Pipeline(source, cfg, process_index=0, process_count=1)
  assert p.long_examples.tolist() == [0, 1, 2]
  run_data = type(
    "RunData",
    (),
    {"tokenizer": _Tokenizer(), "vocab": pipeline_lib.Vocabularies(("play", "stop"), ())},
  )()
  seen: list = []
  records, counts = evaluate.decode_long_examples(
    p, lambda batch: _recognize(batch, seen), run_data, seconds_per_frame=0.04
  )
  by_id = {r.id: r for r in records}
  assert set(by_id) == {"continuous", "one_window", "silent"}
  # Only the buckets' batch shapes, a batch of at most 2 windows at a time.
  assert set(seen) <= {(2, 16000), (2, 32000)}
  assert counts["utterances"] == 3 and counts["no_speech"] == 1
  assert counts["batches"] == len(seen)
  long = by_id["continuous"]
  assert long.ref_text == " ".join(_WORDS) and long.duration_s == pytest.approx(6.0)
  # The overlapping windows' shared words are kept once: the whole reference, in order.
  assert long.hyp_text == long.ref_text
  assert long.hyp_language == "es" and long.confidence == pytest.approx(0.75)
  assert long.hyp_intent == "" and long.hyp_slots == ()  # Several windows: heads missing.
  one = by_id["one_window"]
  assert one.hyp_text == one.ref_text == "delta echo foxtrot"
  assert one.hyp_intent == "play" and one.intent_confidence == pytest.approx(0.8, abs=1e-6)
  assert counts["heads_missing"] == 1
  assert counts["windows"] >= 1 + 3  # 6 s in windows of at most 2 s, and the one window.
  assert by_id["silent"].hyp_text == "" and by_id["silent"].ref_text == ""
  summary = metrics_lib.summarize([long, one])
  assert summary["wer"] == pytest.approx(0.0, abs=1e-9)
  assert summary["intent_acc"] == pytest.approx(0.5, abs=1e-9)

  # With a calibration: its temperatures and threshold, the raw values kept beside them.
  cal = confidence_lib.Calibration(intent_temperature=2.0, defer_threshold=0.99)
  records, _ = evaluate.decode_long_examples(
    p, lambda batch: _recognize(batch, []), run_data, seconds_per_frame=0.04, calibration=cal
  )
  one = {r.id: r for r in records}["one_window"]
  assert one.intent_confidence_raw == pytest.approx(0.8, abs=1e-6)
  assert one.intent_confidence == pytest.approx(2 / 3, abs=1e-6)  # sqrt(.8) / (sqrt(.8) + sqrt(.2))
  assert one.confidence_raw == pytest.approx(0.75, abs=1e-6) and one.deferred
