"""Checkpoints round-trip bit for bit, move between meshes, and survive crashes and damage."""

import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding, SingleDeviceSharding
from jax.sharding import PartitionSpec as P

from moe_asr.training import checkpoint as ckpt

# Every byte value, so base64 handling of the tokenizer item is exercised in full.
_TOKENIZER = bytes(range(256)) * 3
_CONFIG = {"model": {"d_model": 16, "mesh_axes": ("data", "fsdp")}, "lr": 1e-3, "name": "tiny"}
_CONFIG_BACK = {"model": {"d_model": 16, "mesh_axes": ["data", "fsdp"]}, "lr": 1e-3, "name": "tiny"}


def _mesh(shape, names):
  return Mesh(np.array(jax.devices()).reshape(shape), names)


def _train_state():
  """A nested pytree of float32/int32/bf16 arrays plus an adamw state after one update."""
  params = {
    "encoder": {
      "w": jnp.arange(24, dtype=jnp.float32).reshape(4, 6) / 7.0,
      "b": jnp.asarray([0.1, -2.5, 3e-8], jnp.bfloat16),
    },
    "counts": jnp.arange(5, dtype=jnp.int32) - 2,
  }
  float_params = {"encoder": params["encoder"]}
  tx = optax.adamw(1e-3)
  opt_state = tx.init(float_params)
  grads = jax.tree.map(lambda p: jnp.ones_like(p) * 0.3, float_params)
  _, opt_state = tx.update(grads, opt_state, float_params)
  return {"params": params, "opt": opt_state, "step": jnp.asarray(7, jnp.int32)}


def _one_device():
  return SingleDeviceSharding(jax.devices()[0])


def _abstract(tree, sharding):
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), tree)


def _bits(x) -> np.ndarray:
  x = np.asarray(x)
  return x.view(np.uint8) if x.ndim else x.reshape(1).view(np.uint8)


def _assert_bitwise_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(_bits(x), _bits(y))


def test_round_trip_is_bitwise_with_every_item(tmp_path):
  state = _train_state()
  with ckpt.Checkpointer(tmp_path) as ckptr:
    assert ckptr.latest_step() is None
    saved = ckptr.save(
      7,
      state,
      data_state={"next_index": 42, "worker": {"epoch": 1}},
      tokenizer=_TOKENIZER,
      config=_CONFIG,
      extra={"nonfinite_steps": np.int32(3), "loss_scale": np.float32(0.5)},
    )
    assert saved
    ckptr.wait()
    restored = ckptr.restore(_abstract(state, _one_device()))
  assert restored.step == 7
  _assert_bitwise_equal(restored.state, state)
  assert isinstance(restored.state["opt"][0], optax.ScaleByAdamState)
  assert restored.data_state == {"next_index": 42, "worker": {"epoch": 1}}
  assert restored.tokenizer == _TOKENIZER
  assert restored.config == _CONFIG_BACK  # JSON turns tuples into lists.
  assert restored.extra == {"nonfinite_steps": 3, "loss_scale": 0.5}  # numpy -> JSON numbers.
  assert ckpt.read_config(tmp_path) == _CONFIG_BACK
  assert ckpt.read_tokenizer(tmp_path, step=7) == _TOKENIZER


def test_missing_optional_items_come_back_as_none(tmp_path):
  state = {"w": jnp.ones((2, 3))}
  with ckpt.Checkpointer(tmp_path, async_save=False) as ckptr:
    ckptr.save(1, state)
    restored = ckptr.restore(_abstract(state, _one_device()))
  assert (restored.data_state, restored.tokenizer, restored.config, restored.extra) == (None,) * 4
  assert ckpt.read_config(tmp_path) is None
  assert ckpt.read_tokenizer(tmp_path) is None


def test_nnx_state_restores_as_nnx_state(tmp_path):
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  state = nnx.state(model)
  with ckpt.Checkpointer(tmp_path, async_save=False) as ckptr:
    ckptr.save(1, state)
    abstract = nnx.state(nnx.eval_shape(lambda: nnx.Linear(3, 2, rngs=nnx.Rngs(1))))
    restored = ckptr.restore(_abstract(abstract, _one_device()))
  assert isinstance(restored.state, nnx.State)
  _assert_bitwise_equal(restored.state, state)


def test_restore_onto_other_meshes(tmp_path):
  mesh8 = _mesh((8,), ("data",))
  value = jnp.arange(128, dtype=jnp.float32).reshape(16, 8) * 0.5
  state = {"w": jax.device_put(value, NamedSharding(mesh8, P("data", None))), "n": jnp.asarray(3)}
  with ckpt.Checkpointer(tmp_path) as ckptr:
    ckptr.save(5, state)
    ckptr.wait()

    one = SingleDeviceSharding(jax.devices()[3])
    on_one = ckptr.restore(_abstract(state, one))
    assert on_one.state["w"].sharding == one
    np.testing.assert_array_equal(np.asarray(on_one.state["w"]), np.asarray(value))

    mesh24 = _mesh((2, 4), ("x", "y"))
    target = {"w": NamedSharding(mesh24, P("y", "x")), "n": NamedSharding(mesh24, P())}
    abstract = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state, target
    )
    on_24 = ckptr.restore(abstract)
  assert on_24.state["w"].sharding == target["w"]
  # P("y", "x") over (2, 4): rows split 4 ways, columns 2 ways.
  assert {s.data.shape for s in on_24.state["w"].addressable_shards} == {(4, 4)}
  np.testing.assert_array_equal(np.asarray(on_24.state["w"]), np.asarray(value))
  assert int(on_24.state["n"]) == 3


def test_async_save_lets_the_caller_free_the_state_at_once(tmp_path):
  # The train step donates the state right after `save` returns.
  w = jnp.arange(100_000, dtype=jnp.float32)
  with ckpt.Checkpointer(tmp_path) as ckptr:
    ckptr.save(1, {"w": w})
    w.delete()
    ckptr.wait()
    abstract = {"w": jax.ShapeDtypeStruct((100_000,), jnp.float32, sharding=_one_device())}
    restored = ckptr.restore(abstract)
  np.testing.assert_array_equal(np.asarray(restored.state["w"]), np.arange(100_000))


def test_keeps_the_newest_n_and_saves_on_the_interval(tmp_path):
  state = {"w": jnp.zeros(3)}
  with ckpt.Checkpointer(tmp_path, max_to_keep=2) as ckptr:
    for step in range(1, 5):
      assert ckptr.save(step, state)
    ckptr.wait()
    assert ckptr.all_steps() == [3, 4]
    assert ckptr.save(4, state, force=True) is False  # Already saved.
  assert sorted(p for p in os.listdir(tmp_path) if p.isdigit()) == ["3", "4"]

  with ckpt.Checkpointer(tmp_path / "every3", save_interval_steps=3) as ckptr:
    assert [s for s in range(1, 8) if ckptr.should_save(s)] == [3, 6]
    assert ckptr.save(4, state) is False
    assert ckptr.save(4, state, force=True) is True
    ckptr.wait()
    assert ckptr.all_steps() == [4]


def test_nan_never_reaches_a_checkpoint(tmp_path):
  good = _train_state()
  with ckpt.Checkpointer(tmp_path) as ckptr:
    ckptr.save(1, good, extra={"k": 1})
    ckptr.wait()
    bad = jax.tree.map(lambda x: x, good)
    bad["opt"][0].mu["encoder"]["w"] = good["opt"][0].mu["encoder"]["w"].at[2, 3].set(jnp.nan)
    with pytest.raises(ValueError, match=r"step 2 .*leaf \['opt'\]\[0\]\.mu\['encoder'\]\['w'\]"):
      ckptr.save(2, bad)
    inf = jax.tree.map(lambda x: x, good)
    inf["params"]["encoder"]["b"] = good["params"]["encoder"]["b"].at[0].set(jnp.inf)
    with pytest.raises(ValueError, match=r"leaf \['params'\]\['encoder'\]\['b'\]"):
      ckptr.save(2, inf, force=True)
    ckptr.wait()
    assert ckptr.all_steps() == [1]
    restored = ckptr.restore(_abstract(good, _one_device()))
  assert not (tmp_path / "2").exists()
  assert restored.step == 1 and restored.extra == {"k": 1}
  _assert_bitwise_equal(restored.state, good)


def test_nonfinite_leaves_sees_every_shard_and_skips_integers():
  mesh = _mesh((8,), ("data",))
  w = jnp.zeros((16, 8)).at[15, 7].set(-jnp.inf)  # In the shard on the last device.
  tree = {
    "a": jax.device_put(w, NamedSharding(mesh, P("data", None))),
    "b": jnp.ones(3, jnp.bfloat16).at[1].set(jnp.nan),  # Another device set: device 0 only.
    "c": jnp.ones(4, jnp.float32),
    "i": jnp.arange(4, dtype=jnp.int32),
    "h": np.array([1.0, np.nan]),  # Host leaves are checked too.
  }
  assert ckpt.nonfinite_leaves(tree) == ["['a']", "['b']", "['h']"]
  assert ckpt.nonfinite_leaves({"c": tree["c"], "i": tree["i"]}) == []


def test_half_written_step_is_ignored_and_swept(tmp_path):
  state = {"w": jnp.arange(4.0)}
  with ckpt.Checkpointer(tmp_path, async_save=False) as ckptr:
    ckptr.save(1, state)
    ckptr.save(2, {"w": state["w"] * 2})
  # A save of step 3 cut short: orbax's temporary directory, partly written.
  partial = tmp_path / "3.orbax-checkpoint-tmp-1700000000000000"
  shutil.copytree(tmp_path / "2", partial)
  shutil.rmtree(partial / "state" / "d")
  os.remove(partial / "commit_success.txt")

  with ckpt.Checkpointer(tmp_path) as ckptr:
    assert ckptr.latest_step() == 2
    assert ckptr.all_steps() == [1, 2]
    restored = ckptr.restore(_abstract(state, _one_device()))
    np.testing.assert_array_equal(np.asarray(restored.state["w"]), [0.0, 2.0, 4.0, 6.0])
    assert partial.exists()  # Opening does not delete (a reader may share the directory).
    assert ckptr.save(3, {"w": state["w"] * 3})
    ckptr.wait()
    assert not partial.exists()
    assert ckptr.latest_step() == 3


def test_a_damaged_step_is_named_and_the_one_before_it_restored(tmp_path, caplog):
  state = {"w": jnp.arange(6.0).reshape(2, 3)}
  abstract = _abstract(state, _one_device())
  with ckpt.Checkpointer(tmp_path, async_save=False) as ckptr:
    ckptr.save(1, state, config={"a": 1})
    ckptr.save(2, state, config={"a": 2}, tokenizer=b"spm")
  for data_file in (tmp_path / "2" / "state" / "d").iterdir():
    data_file.unlink()
  with ckpt.Checkpointer(tmp_path) as ckptr:
    with caplog.at_level("WARNING", logger="moe_asr.training.checkpoint"):
      restored = ckptr.restore(abstract)
    assert (restored.step, restored.damaged, restored.config) == (1, [2], {"a": 1})
    assert f"step 2 in {tmp_path} is damaged" in caplog.text
    # A step asked for by number is that step or an error naming it.
    with pytest.raises(ckpt.CheckpointError, match=f"step 2 in {re.escape(str(tmp_path))}"):
      ckptr.restore(abstract, step=2)
    assert ckptr.restore(abstract, step=1).config == {"a": 1}
    with pytest.raises(FileNotFoundError, match=r"step 9 .*complete steps: \[1, 2\]"):
      ckptr.restore(abstract, step=9)
    # Only the items asked for are read.
    only_state = ckptr.restore(abstract, step=1, items=(ckpt.STATE,))
    assert only_state.config is None and only_state.step == 1
  assert (tmp_path / "2").exists()  # A reader leaves the damaged step where it is.

  config_file = tmp_path / "2" / "config" / "metadata"
  config_file.write_text(config_file.read_text()[:5])
  with pytest.raises(ckpt.CheckpointError, match=f"step 2 in {re.escape(str(tmp_path))}"):
    ckpt.read_config(tmp_path, step=2)
  assert ckpt.read_config(tmp_path) == {"a": 1}
  tokenizer_file = tmp_path / "2" / "tokenizer" / "metadata"
  tokenizer_file.write_text(tokenizer_file.read_text().replace("c3Bt", "c3Bu"))  # b"spm" -> b"spn"
  with pytest.raises(ckpt.CheckpointError, match="step 2 .*sha256"):
    ckpt.read_tokenizer(tmp_path, step=2)

  # Every step damaged: an error naming them all.
  for data_file in (tmp_path / "1" / "state" / "d").iterdir():
    data_file.unlink()
  with (
    ckpt.Checkpointer(tmp_path) as ckptr,
    pytest.raises(ckpt.CheckpointError, match=r"every step \(\[1, 2\]\) is damaged"),
  ):
    ckptr.restore(abstract)


def test_a_training_restore_moves_damaged_steps_aside_and_saves_them_again(tmp_path):
  state = {"w": jnp.arange(3.0)}
  abstract = _abstract(state, _one_device())
  with ckpt.Checkpointer(tmp_path, async_save=False) as ckptr:
    ckptr.save(1, state)
    ckptr.save(2, {"w": state["w"] * 2})
  for path in (tmp_path / "2").rglob("*"):
    if path.is_file():
      path.write_bytes(b"\0" * path.stat().st_size)  # Zeroed, as a failed disk leaves it.
  with ckpt.Checkpointer(tmp_path, async_save=False) as ckptr:
    restored = ckptr.restore(abstract, set_aside_damaged=True)
    assert (restored.step, restored.damaged) == (1, [2])
    assert ckptr.all_steps() == [1]
    assert (tmp_path / "2.damaged").is_dir()
    assert ckptr.save(2, {"w": state["w"] * 3})
    back = ckptr.restore(abstract)
  assert back.step == 2
  np.testing.assert_array_equal(np.asarray(back.state["w"]), [0.0, 3.0, 6.0])


def test_data_state_from_another_process_count_is_not_restored(tmp_path):
  state = {"w": jnp.ones(2)}
  with ckpt.Checkpointer(tmp_path, async_save=False) as ckptr:
    ckptr.save(1, state, data_state={"next_index": 5})
  data_dir = tmp_path / "1" / "data"
  assert sorted(os.listdir(data_dir)) == ["commit_success.txt", "process_0-of-1.json"]
  os.rename(data_dir / "process_0-of-1.json", data_dir / "process_0-of-2.json")
  with ckpt.Checkpointer(tmp_path) as ckptr:
    restored = ckptr.restore(_abstract(state, _one_device()))
  assert restored.data_state is None
  np.testing.assert_array_equal(np.asarray(restored.state["w"]), [1.0, 1.0])


def test_bad_items_are_refused_by_name(tmp_path):
  with ckpt.Checkpointer(tmp_path) as ckptr:
    with pytest.raises(TypeError, match="'config' is not JSON-serializable"):
      ckptr.save(1, {"w": jnp.ones(1)}, config={"f": object()})
    with pytest.raises(TypeError, match="'tokenizer' must be bytes"):
      ckptr.save(1, {"w": jnp.ones(1)}, tokenizer="not bytes")
    with pytest.raises(TypeError, match="'extra' must be a dict"):
      ckptr.save(1, {"w": jnp.ones(1)}, extra=[1, 2])
    assert ckptr.all_steps() == []
  with pytest.raises(FileNotFoundError, match="No complete checkpoint"):
    ckpt.read_config(tmp_path)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    ckpt.read_tokenizer(tmp_path / "nowhere")


def test_preemption_guard_sets_flag_and_restores_handler():
  def previous(signum, frame):
    raise AssertionError("the guard's handler should be active")

  old = signal.signal(signal.SIGTERM, previous)
  try:
    with ckpt.PreemptionGuard() as guard:
      assert not guard.requested
      os.kill(os.getpid(), signal.SIGTERM)
      deadline = time.time() + 5
      while not guard.requested and time.time() < deadline:
        time.sleep(0.01)
      assert guard.requested
    assert signal.getsignal(signal.SIGTERM) is previous
  finally:
    signal.signal(signal.SIGTERM, old)

  errors = []

  def enter_off_main_thread():
    try:
      with ckpt.PreemptionGuard():
        pass
    except RuntimeError as e:
      errors.append(str(e))

  thread = threading.Thread(target=enter_off_main_thread)
  thread.start()
  thread.join()
  assert errors and "main thread" in errors[0]


_SAVE_AND_EXIT = textwrap.dedent(
  """
  import sys
  import jax.numpy as jnp
  from moe_asr.training import checkpoint as ckpt

  ckptr = ckpt.Checkpointer(sys.argv[1], async_save=True)
  ckptr.save(3, {"w": jnp.arange(1000.0)}, data_state={"next_index": 9}, config={"x": 1})
  ckptr.close()
  """
)


def test_async_save_in_a_process_that_exits_is_restorable(tmp_path):
  proc = subprocess.run(
    [sys.executable, "-c", _SAVE_AND_EXIT, str(tmp_path)],
    capture_output=True,
    text=True,
    timeout=120,
    check=False,
    cwd=pathlib.Path(__file__).resolve().parents[1],
  )
  assert proc.returncode == 0, proc.stderr
  with ckpt.Checkpointer(tmp_path) as ckptr:
    assert ckptr.all_steps() == [3]
    abstract = {"w": jax.ShapeDtypeStruct((1000,), jnp.float32, sharding=_one_device())}
    restored = ckptr.restore(abstract)
  np.testing.assert_array_equal(np.asarray(restored.state["w"]), np.arange(1000.0))
  assert restored.data_state == {"next_index": 9} and restored.config == {"x": 1}


def test_a_relative_directory_saves_and_restores(tmp_path, monkeypatch):
  # `moe-asr demo --workdir runs/demo`: orbax itself refuses relative paths for arrays.
  monkeypatch.chdir(tmp_path)
  state = {"w": jnp.arange(3.0)}
  with ckpt.Checkpointer("runs/demo/checkpoints", async_save=False) as ckptr:
    ckptr.save(1, state, data_state={"next_index": 5}, config=_CONFIG)
  assert ckpt.read_config("runs/demo/checkpoints") == _CONFIG_BACK
  with ckpt.Checkpointer("runs/demo/checkpoints") as ckptr:
    assert ckptr.directory == tmp_path / "runs" / "demo" / "checkpoints"
    restored = ckptr.restore(_abstract(state, _one_device()))
  assert restored.step == 1 and restored.data_state == {"next_index": 5}
  np.testing.assert_array_equal(np.asarray(restored.state["w"]), [0.0, 1.0, 2.0])


def test_a_checkpoint_refuses_another_tokenizer_naming_both(tmp_path, caplog):
  state = {"w": jnp.arange(3.0)}
  abstract = _abstract(state, _one_device())
  ours = ckpt.tokenizer_id(_TOKENIZER, "/runs/a/tokenizer.model")
  swapped = _TOKENIZER[:10] + _TOKENIZER[11:12] + _TOKENIZER[10:11] + _TOKENIZER[12:]  # Same size.
  theirs = ckpt.tokenizer_id(swapped, "/elsewhere/tokenizer.model")
  with ckpt.Checkpointer(tmp_path, async_save=False) as ckptr:
    ckptr.save(1, state, tokenizer=_TOKENIZER, tokenizer_source="/runs/a/tokenizer.model")
    ckptr.save(2, state)  # A step without a tokenizer.
  assert ckpt.saved_tokenizer_id(tmp_path, 1) == ours
  with ckpt.Checkpointer(tmp_path) as ckptr:
    assert ckptr.restore(abstract, step=1, tokenizer=ours).step == 1
    with pytest.raises(ckpt.TokenizerMismatchError) as e:
      ckptr.restore(abstract, step=1, tokenizer=theirs)
    message = str(e.value)
    for side in (ours, theirs):  # Digest, size and file of both.
      assert f"sha256 {side['sha256'][:12]}, {len(_TOKENIZER)} bytes, from {side['source']}" in (
        message
      )
    assert ours["sha256"] != theirs["sha256"]
    # No fallback past a mismatch: the newest step (2) records no tokenizer and is let through
    # with a warning; asked for step 1, the mismatch stops the restore.
    with caplog.at_level("WARNING", logger="moe_asr.training.checkpoint"):
      assert ckptr.restore(abstract, tokenizer=theirs).step == 2
    assert "tokenizer of checkpoint step 2" in caplog.text and "cannot be checked" in caplog.text

  # A checkpoint from before identities were recorded: its tokenizer copy is compared.
  shutil.rmtree(tmp_path / "1" / ckpt.TOKENIZER_ID)
  with ckpt.Checkpointer(tmp_path) as ckptr:
    assert ckptr.restore(abstract, step=1, tokenizer=ours).step == 1
    with pytest.raises(ckpt.TokenizerMismatchError, match="the copy in checkpoint step 1"):
      ckptr.restore(abstract, step=1, tokenizer=theirs)


_FULL_DISK = """
import os, sys
import jax
import jax.numpy as jnp
import numpy as np
from moe_asr.training import checkpoint as ckpt
directory = sys.argv[1]
state = {"w": jnp.arange(1000, dtype=jnp.float32)}
with ckpt.Checkpointer(directory) as ckptr:
  ckptr.save(1, state, config={"a": 1})
  ckptr.wait()
  noise = np.random.default_rng(0).standard_normal(1 << 19).astype(np.float32)  # 2 MiB.
  try:
    ckptr.save(2, {"w": state["w"], "noise": jnp.asarray(noise)}, config={"a": 2})
    ckptr.wait()
  except ckpt.SaveError as e:
    print("SaveError:", e)
  print("steps:", ckptr.all_steps(), "entries:", sorted(os.listdir(directory)))
one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
target = {"w": jax.ShapeDtypeStruct((1000,), jnp.float32, sharding=one_device)}
with ckpt.Checkpointer(directory) as ckptr:
  restored = ckptr.restore(target)
  print("restored:", restored.step, restored.config, float(restored.state["w"].sum()))
"""


def test_a_save_into_a_full_filesystem_fails_naming_it_and_keeps_the_previous_step(tmp_path):
  """A 1 MiB tmpfs, mounted in a user and mount namespace of its own (no root needed where the
  kernel allows unprivileged user namespaces; skipped where it does not)."""
  mount = tmp_path / "small"
  mount.mkdir()
  probe = subprocess.run(
    ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {mount}"],
    capture_output=True,
    check=False,
  )
  if probe.returncode != 0:
    pytest.skip(f"no size-capped tmpfs here (unshare -rm + mount: {probe.stderr.decode()[-200:]})")
  script = tmp_path / "full.py"
  script.write_text(_FULL_DISK)
  directory = mount / "ckpt"
  cmd = f"mount -t tmpfs -o size=1m tmpfs {mount} && exec {sys.executable} {script} {directory}"
  proc = subprocess.run(
    ["unshare", "-rm", "sh", "-c", cmd], capture_output=True, text=True, timeout=300, check=False
  )
  out = proc.stdout
  assert proc.returncode == 0, out + proc.stderr[-3000:]
  expected = f"SaveError: [Errno 28] Saving checkpoint step 2 to {directory} failed: the disk is"
  assert expected in out, out + proc.stderr[-3000:]
  assert "the step needs about 2.0 MiB before compression" in out
  assert "The newest checkpoint, step 1, is intact" in out
  # The unfinished step 2 is gone (its space given back); step 1 is the newest and restores.
  assert "steps: [1] entries: ['1']" in out, out
  assert f"restored: 1 {{'a': 1}} {float(sum(range(1000)))}" in out, out
