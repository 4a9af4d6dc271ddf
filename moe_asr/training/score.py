"""`moe-asr eval`: restore a workdir's model, decode splits, write the report.

Writes `W/eval/report.json` (DESIGN §7), `report.md`, per-utterance
hypotheses and plots, and returns the report.
"""

from __future__ import annotations

import logging
import pathlib
from collections.abc import Sequence

import jax
import ml_collections

from moe_asr import config_lib
from moe_asr.evaluation import report as report_lib
from moe_asr.models import info as info_lib
from moe_asr.models import partitioning
from moe_asr.training import checkpoint as checkpoint_lib
from moe_asr.training import distributed, train

_LOG = logging.getLogger(__name__)


def workdir_config(
  workdir: str | pathlib.Path, overrides: Sequence[str] = ()
) -> ml_collections.ConfigDict:
  """The config a workdir was trained with (from its newest checkpoint), with overrides."""
  ckpt_dir = pathlib.Path(workdir) / "checkpoints"
  saved = checkpoint_lib.read_config(ckpt_dir) if ckpt_dir.exists() else None
  if saved is None:
    raise FileNotFoundError(f"No checkpoint with a config in {ckpt_dir}; train first.")
  cfg = ml_collections.ConfigDict(saved)
  config_lib.apply_overrides(cfg, overrides)
  return cfg


def decode_settings() -> dict:
  """What the report records about decoding."""
  return {"method": "ctc_greedy", "task_heads_on": "ctc_hypothesis"}


def evaluate_workdir(
  workdir: str | pathlib.Path,
  *,
  splits: Sequence[str] | None = None,
  overrides: Sequence[str] = (),
  out_dir: str | pathlib.Path | None = None,
  cfg: ml_collections.ConfigDict | None = None,
) -> dict:
  """Scores the newest checkpoint of `workdir` on `splits` and writes the report.

  Args:
    workdir: a training workdir.
    splits: dataset splits (default `config.eval.splits`).
    overrides: `a.b=value` config overrides (e.g. `data.data_dir=...`).
    out_dir: where the report goes (default `W/eval`).
    cfg: use this config instead of the checkpoint's.

  Returns:
    The report dict (also written to `out_dir/report.json`).
  """
  distributed.initialize()
  workdir = pathlib.Path(workdir)
  cfg = cfg if cfg is not None else workdir_config(workdir, overrides)
  splits = tuple(splits or cfg.eval.splits)
  run = train.build_run(cfg, workdir, for_training=False)
  sizes = info_lib.model_info(
    cfg,
    vocab_size=run.data.tokenizer.vocab_size,
    num_intents=max(run.data.num_intents, 1),
    num_slot_tags=max(run.data.num_slot_tags, 1),
  )
  split_reports, records = {}, {}
  with run.mesh, partitioning.axis_rules(run.rules, run.mesh):
    eval_steps = train.make_eval_steps(run)
    for split in splits:
      _LOG.info("Decoding %s", split)
      _, recs, info = train.validate(run, eval_steps, split)
      records[split] = recs
      split_reports[split] = report_lib.split_report(recs, rtf=info["rtf"])
      split_reports[split]["skipped"] = info["skipped"]
  report = report_lib.build_report(
    model={
      "params_total": int(sizes["params_total"]),
      "params_active": int(sizes["params_active"]),
      "step": int(run.start_step),
    },
    decode=decode_settings(),
    splits=split_reports,
    extra={"compiles": eval_steps.compiles, "devices": jax.device_count()},
  )
  if jax.process_index() == 0:
    out_dir = pathlib.Path(out_dir or workdir / "eval")
    metrics_path = workdir / "metrics.jsonl"
    report_lib.write_report(
      report,
      out_dir,
      records=records,
      plots=bool(cfg.eval.get("plots", True)),
      metrics_path=metrics_path if metrics_path.exists() else None,
    )
  run.checkpointer.close()
  return report
