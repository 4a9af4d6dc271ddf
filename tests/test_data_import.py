"""Your own recordings without Python: `moe-asr data import`, text-less rows, and task heads
whose vocabularies come from the data (a `local_manifest` dataset with intents and slots)."""

import json
import pathlib

import numpy as np
import pytest
import soundfile as sf
import tensorflow_datasets as tfds
from conftest import REPO, run_cli

import moe_asr.data.builders  # noqa: F401
from moe_asr.data.synth import tts
from moe_asr.evaluation import metrics, report

SR = tts.SAMPLE_RATE


def _say(text: str, lang: str = "en", variant: str = "m3", rate: int = 170, pitch: int = 50):
  return tts.synthesize(text, lang, tts.Voice(variant, rate=rate, pitch=pitch))


def _int16(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float32)
  if np.abs(x).max() > 1.5:  # Already int16-scaled.
    return x.astype(np.int16)
  return (np.clip(x, -1, 1) * 32767).astype(np.int16)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> pathlib.Path:
  """Recordings in several formats, one corrupt file, one row without text but an intent."""
  root = tmp_path_factory.mktemp("recordings")
  (root / "audio").mkdir()
  a = _int16(_say("turn on the lights"))
  sf.write(root / "audio" / "a.wav", a, SR, subtype="PCM_16")
  sf.write(root / "audio" / "b.flac", _int16(_say("play some music", variant="f2")), SR)
  # 8 kHz: resampled to 16 kHz on import.
  c = _int16(_say("turn off the lights", variant="m1"))[:: SR // 8000]
  sf.write(root / "audio" / "c8k.wav", c, 8000, subtype="PCM_16")
  d = _int16(_say("play some music", variant="m2"))
  sf.write(root / "audio" / "stereo.wav", np.stack([d, d // 2], axis=1), SR, subtype="PCM_16")
  (root / "audio" / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage")
  sf.write(root / "audio" / "nolabel.wav", _int16(_say("lights on please")), SR)
  rows = [
    {"path": "audio/a.wav", "text": "turn on the lights", "intent": "lights_on",
     "slots": [["device", "lights"]]},
    {"path": "audio/b.flac", "text": "play some music", "intent": "play_music"},
    {"path": "audio/c8k.wav", "text": "turn off the lights", "intent": "lights_off"},
    {"path": "audio/stereo.wav", "text": "play some music", "intent": "play_music"},
    {"path": "audio/corrupt.wav", "text": "play some music", "intent": "play_music"},
    {"path": "audio/nolabel.wav", "intent": "lights_on"},  # No transcript.
  ]  # fmt: skip
  (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  (root / "test.tsv").write_text("path\ttext\tintent\naudio/a.wav\tturn on the lights\tlights_on\n")
  return root


def test_data_import_builds_the_dataset_and_names_what_it_skipped(folder, tmp_path):
  data_dir = tmp_path / "data"
  proc = run_cli(
    "data", "import", str(folder), "--name", "mine", "--data-dir", str(data_dir),
    "--default-language", "en",
  )  # fmt: skip
  assert proc.returncode == 0, proc.stdout + proc.stderr
  out = proc.stdout
  assert "train: 5 utterances (1 without a transcript: task heads only), 1 skipped" in out
  assert "corrupt.wav" in out and "train.jsonl:5" in out
  assert "3 intents, 1 slot types" in out

  builder = tfds.builder("local_manifest/mine", data_dir=str(data_dir))
  train = {ex["id"].decode(): ex for ex in builder.as_data_source(split="train")}
  assert sorted(train) == ["a", "b", "c8k", "nolabel", "stereo"]
  # Every format comes out as 16 kHz mono int16; the 8 kHz file's duration is kept.
  assert train["c8k"]["audio"].dtype == np.int16 and train["c8k"]["audio"].ndim == 1
  c_seconds = sf.info(folder / "audio" / "c8k.wav").duration
  assert len(train["c8k"]["audio"]) / 16000 == pytest.approx(c_seconds, abs=0.01)
  assert train["nolabel"]["text"].decode() == ""
  assert train["nolabel"]["intent"].decode() == "lights_on"
  meta = builder.info.metadata
  assert meta["intents"] == ["lights_off", "lights_on", "play_music"]
  assert meta["slot_types"] == ["device"]
  (skipped,) = meta["skipped"]["train"]
  assert skipped["path"] == "audio/corrupt.wav" and skipped["line"] == 5

  # --on-error raise stops at the corrupt file, naming it.
  proc = run_cli(
    "data", "import", str(folder), "--name", "strict", "--data-dir", str(data_dir),
    "--default-language", "en", "--on-error", "raise",
  )  # fmt: skip
  assert proc.returncode != 0
  assert "corrupt.wav" in proc.stdout + proc.stderr


def test_metrics_skip_text_less_rows_and_heads_that_do_not_exist():
  labelled = metrics.Utterance("1", "turn on", "turn on", ref_intent="lights_on")
  text_less = metrics.Utterance("2", "", "some words", ref_intent="lights_on")
  # No transcript: no error rate (the hypothesis' words are not errors against nothing).
  assert metrics.summarize([labelled, text_less])["cer"] == 0.0
  # A model without task heads predicts no intent: not measured, not 0.
  summary = metrics.summarize([labelled, text_less])
  assert summary["intent_acc"] is None and summary["slot_f1"] is None
  table = report.format_table({"splits": {"test": summary}})
  assert table.splitlines()[1].split()[6] == "n/a"  # The intent column.
  with_heads = metrics.Utterance("3", "x", "x", ref_intent="a", hyp_intent="b")
  assert metrics.summarize([labelled, with_heads])["intent_acc"] == 0.0


# Two intents a word apart at the start, so that a few steps of a tiny model can tell them.
_PHRASES = {
  "lights_on": ["turn on the lights", "turn on the lamp", "turn on the light now"],
  "play_music": ["play some music", "play a song", "play music now"],
}


@pytest.fixture(scope="module")
def intent_set(tmp_path_factory) -> pathlib.Path:
  root = tmp_path_factory.mktemp("intent_set")
  rows = {"train": [], "test": []}
  voices = {"train": [("m3", 150), ("f2", 180), ("m1", 200), ("klatt", 160)],
            "test": [("m2", 170), ("f4", 190)]}  # fmt: skip
  for split, split_voices in voices.items():
    for intent, phrases in _PHRASES.items():
      for phrase in phrases:
        for variant, rate in split_voices:
          name = f"{split}_{len(rows[split])}.wav"
          sf.write(root / name, _int16(_say(phrase, variant=variant, rate=rate)), SR)
          slots = [["device", phrase.split()[3]]] if intent == "lights_on" else []
          rows[split].append({"path": name, "text": phrase, "intent": intent, "slots": slots})
          if split == "train":  # The same audio with the intent only: the heads hear it.
            rows[split].append({"path": name, "id": f"{name}_intent", "intent": intent})
  for split, lines in rows.items():
    (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
  return root


def test_local_manifest_intents_train_task_heads_and_are_scored(intent_set, tmp_path):
  data_dir, workdir = tmp_path / "data", tmp_path / "run"
  proc = run_cli(
    "data", "import", str(intent_set), "--name", "intents", "--data-dir", str(data_dir),
    "--default-language", "en",
  )  # fmt: skip
  assert proc.returncode == 0, proc.stdout + proc.stderr
  proc = run_cli(
    "train", "--config", str(REPO / "moe_asr" / "configs" / "tiny.py"), "--workdir", str(workdir),
    "--config.data.name=local_manifest/intents", f"--config.data.data_dir={data_dir}",
    "--config.data.vocab_size=290", "--config.data.buckets=((2.5,8),)",
    "--config.data.eval_splits=('test',)", "--config.eval.splits=('test',)",
    "--config.train.steps=60", "--config.train.log_every=20", "--config.train.learning_rate=3e-3",
    "--config.train.loss.task=2.0", "--config.compilation_cache=''",
  )  # fmt: skip
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  saved = json.loads((workdir / "run_data.json").read_text())
  assert saved["intents"] == ["lights_on", "play_music"]
  assert saved["slot_types"] == ["device"]

  out = tmp_path / "eval"
  proc = run_cli("eval", "--workdir", str(workdir), "--out", str(out))
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  test = json.loads((out / "report.json").read_text())["splits"]["test"]
  assert test["n"] == 12
  hyps = [json.loads(line) for line in (out / "hypotheses" / "test.jsonl").read_text().splitlines()]
  assert {h["hyp_intent"] for h in hyps} <= {"lights_on", "play_music"}
  assert all(h["hyp_intent"] for h in hyps)
  # Two balanced intents: chance is 0.5; the heads do better on 12 utterances of unseen voices,
  # on the (still empty) greedy hypothesis, which the text-less rows trained them for, and on
  # the reference transcript (teacher forced).
  assert test["intent_acc"] is not None and test["intent_acc"] > 0.5, test["intent_acc"]
  assert test["tf_intent_acc"] > 0.5, test["tf_intent_acc"]
  assert test["slot_f1"] is not None  # Measured: the split has slot labels.
