"""The common example schema (docs/design.md §3) as TFDS features.

Every data source — the embedded corpus, a local manifest, catalog sets — maps
its examples to these features so that the pipeline, training and evaluation
read them the same way.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SAMPLE_RATE = 16_000

# Value of `snr_db` for audio with no added noise.
CLEAN_SNR_DB = float("inf")


def features():
  """Returns the `tfds.features.FeaturesDict` of the common schema."""
  import tensorflow_datasets as tfds

  return tfds.features.FeaturesDict(
    {
      # int16 [samples] at 16 kHz.
      "audio": tfds.features.Audio(
        shape=(None,), dtype=np.int16, sample_rate=SAMPLE_RATE, encoding="none"
      ),
      "text": tfds.features.Text(),  # Normalised transcript.
      "words_lang": tfds.features.Sequence(tfds.features.Text()),  # Per whitespace word.
      # Phones per word of `text`, joined by " | " (`moe_asr.data.phonemes`); "" if none.
      "phonemes": tfds.features.Text(),
      # (start_sample, end_sample, language index) per language segment, or empty.
      "segments": tfds.features.Tensor(shape=(None, 3), dtype=np.int32),
      "language": tfds.features.Text(),  # Dominant language code, or "mixed".
      "intent": tfds.features.Text(),  # End-task label, "" where the set has none.
      "slots": tfds.features.Sequence(
        {"type": tfds.features.Text(), "value": tfds.features.Text()}
      ),
      "speaker": tfds.features.Text(),  # Voice / speaker id.
      "id": tfds.features.Text(),  # Stable example id.
      "snr_db": np.float32,  # Added-noise SNR in dB; inf for clean audio.
    }
  )


def empty_example(example_id: str, audio: np.ndarray, text: str) -> dict[str, Any]:
  """An example with the given audio and text and every optional field empty."""
  return {
    "audio": audio,
    "text": text,
    "words_lang": [],
    "phonemes": "",
    "segments": np.zeros((0, 3), np.int32),
    "language": "",
    "intent": "",
    "slots": {"type": [], "value": []},
    "speaker": "",
    "id": example_id,
    "snr_db": CLEAN_SNR_DB,
  }
