"""Where a compiled step's time goes: a `jax.profiler` trace summarised per part of the model.

    breakdown = step_profile.profile(compiled, run_step, steps=3, classify=classify_train_op)

`profile` runs `run_step()` a few times under `jax.profiler.trace`, reads the trace
the profiler writes (`*.trace.json.gz`, Chrome trace-event JSON; no TensorBoard
plugin needed) and keeps the events of the compiled program's thunks (XLA:CPU runs a
program as a sequence of thunks, one per fusion, matmul, copy or loop, each traced
with its HLO instruction in `args.hlo_op`). Each instruction is looked up in
`compiled.as_text()`, whose op metadata holds the `jax.named_scope` path (`op_name`;
the backward pass wraps the scope as `transpose(jvp(...))`) and the Python call stack
that traced it (`stack_frame_id`), and `classify` maps that to a part.

Time is attributed by wall clock: every instant of a step is split evenly between the
leaf thunks running at that instant (XLA:CPU runs independent thunks concurrently, so
per-thunk durations add up to more than the step); a loop or conditional thunk keeps
only the instants when none of its body's thunks runs. What no thunk covers is left to
the caller: gaps within an execution (`span_ms - covered_ms`: the runtime between
thunks, or a thread descheduled on a busy machine) and host time around it (`step_ms -
span_ms`: dispatch, argument handling). A fusion takes the metadata XLA gave it (that of
its root instruction), so the few fusions that cross a part boundary count for one side;
an instruction XLA added without metadata (a copy, a layout change, a broadcast of
zeros) takes that of its nearest operand or user.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import gzip
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping

# Thunks that run other thunks: their own time is what their body's thunks leave.
CONTAINER_OPCODES = frozenset({"while", "conditional", "call"})

_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_OP_NAME = re.compile(r'op_name="((?:[^"\\]|\\.)*)"')
_FRAME_ID = re.compile(r"stack_frame_id=(\d+)")
_OPCODE = re.compile(r"\s*[^\s(]*\s+([\w\-]+)\(")
_NAME = re.compile(r"%([\w.\-]+)")
_CALLS = re.compile(r"calls=%([\w.\-]+)")
_SECTION = re.compile(r"^(FileNames|FunctionNames|FileLocations|StackFrames)$")


@dataclasses.dataclass(frozen=True)
class Op:
  """One HLO instruction: opcode, named-scope path and call stack (innermost frame first).

  `source` says whose metadata `op_name` and `frames` are: "own"; "fused" (a fusion
  without metadata: an instruction of the computation it calls, its root first);
  "operand" or "user" (an instruction XLA added, such as a copy or a layout change: its
  nearest operand or user with metadata); "none".
  """

  opcode: str
  op_name: str
  frames: tuple[tuple[str, str], ...]  # (file path, function name)
  source: str = "own"

  @property
  def scopes(self) -> list[str]:
    """The op_name's components with transformation wrappers removed, outermost first."""
    return [t for t in re.split(r"[/()]", self.op_name) if t]

  @property
  def phase(self) -> str:
    """The pass: bwd (transposed), fwd (under a differentiation) or other."""
    if "transpose(" in self.op_name:
      return "bwd"
    return "fwd" if "jvp(" in self.op_name else "other"


def _opcode(rhs: str) -> str:
  """The opcode of an instruction's right-hand side `shape opcode(operands), ...`."""
  start = 0
  if rhs.startswith("("):  # A tuple shape: skip past its closing parenthesis.
    depth = 0
    for pos, ch in enumerate(rhs):
      depth += (ch == "(") - (ch == ")")
      if depth == 0:
        start = pos + 1
        break
  m = _OPCODE.match(rhs, start)
  return m.group(1) if m else ""


def _operands(rhs: str, opcode: str) -> list[str]:
  """The operand names in `opcode(...)` of an instruction's right-hand side."""
  start = rhs.find(opcode + "(")
  if start < 0:
    return []
  depth, pos = 0, start + len(opcode)
  for pos in range(start + len(opcode), len(rhs)):
    depth += (rhs[pos] == "(") - (rhs[pos] == ")")
    if depth == 0:
      break
  return _NAME.findall(rhs, start, pos)


@dataclasses.dataclass
class _Instruction:
  opcode: str
  op_name: str
  frame: int
  operands: list[str]
  calls: str | None


def parse_hlo(text: str) -> tuple[str, dict[str, Op]]:
  """(module name, {instruction name: Op}) of `compiled.as_text()`."""
  module = ""
  sections: dict[str, dict[int, str]] = collections.defaultdict(dict)
  section = None
  raw: dict[str, _Instruction] = {}
  computations: dict[str, list[str]] = {}  # Root last.
  body: list[str] = []
  root = None
  for line in text.splitlines():
    if line.startswith("HloModule "):
      module = line.split()[1].rstrip(",")
      continue
    m = _SECTION.match(line)
    if m:
      section = m.group(1)
      continue
    if section is not None:
      if not line.strip():
        section = None
      else:
        key, _, value = line.strip().partition(" ")
        sections[section][int(key)] = value
      continue
    if not line.startswith(" ") and line.rstrip().endswith("{"):  # A computation starts.
      body, root = [], None
      name = line.split()[1] if line.startswith("ENTRY ") else line.split()[0]
      computations[name.lstrip("%")] = body
      continue
    if line.startswith("}"):
      if root is not None:
        body.append(root)
      continue
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    name, rhs = m.groups()
    if line.lstrip().startswith("ROOT "):
      root = name
    else:
      body.append(name)
    opcode = _opcode(rhs)
    op_name = _OP_NAME.search(rhs)
    frame = _FRAME_ID.search(rhs)
    calls = _CALLS.search(rhs)
    raw[name] = _Instruction(
      opcode,
      op_name.group(1) if op_name else "",
      int(frame.group(1)) if frame else 0,
      _operands(rhs, opcode),
      calls.group(1) if calls else None,
    )

  def fields(value: str) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", value)}

  files = {k: v.strip('"') for k, v in sections["FileNames"].items()}
  functions = {k: v.strip('"') for k, v in sections["FunctionNames"].items()}
  locations = {}
  for k, v in sections["FileLocations"].items():
    f = fields(v)
    locations[k] = (
      files.get(f.get("file_name_id"), ""),
      functions.get(f.get("function_name_id"), ""),
    )
  parents = {}
  for k, v in sections["StackFrames"].items():
    f = fields(v)
    # The printed parent is the parent's id plus one (0: none), as walking a chain shows.
    parents[k] = (f.get("file_location_id", 0), f.get("parent_frame_id", 0) - 1)

  stacks: dict[int, tuple[tuple[str, str], ...]] = {}

  def stack(frame_id: int) -> tuple[tuple[str, str], ...]:
    if frame_id not in stacks:
      out, seen = [], set()
      i = frame_id
      while i in parents and i not in seen:
        seen.add(i)
        loc, i = parents[i]
        if loc in locations:
          out.append(locations[loc])
      stacks[frame_id] = tuple(out)
    return stacks[frame_id]

  users: dict[str, list[str]] = collections.defaultdict(list)
  for name, ins in raw.items():
    for operand in ins.operands:
      users[operand].append(name)

  def nearest(name: str, links: Callable[[str], list[str]]) -> _Instruction | None:
    """The first instruction with metadata, breadth first along `links`, 3 steps at most."""
    frontier, seen = [name], {name}
    for _ in range(3):
      frontier = [n for f in frontier for n in links(f) if n in raw and n not in seen]
      seen.update(frontier)
      for n in frontier:
        if raw[n].op_name and raw[n].opcode != "parameter":
          return raw[n]
    return None

  def fused(ins: _Instruction) -> _Instruction | None:
    inner = computations.get(ins.calls or "", [])
    return next((raw[n] for n in reversed(inner) if raw[n].op_name), None)

  ops = {}
  for name, ins in raw.items():
    source, meta = "own", ins
    if not ins.op_name:
      source, meta = "none", None
      if ins.opcode == "fusion":
        source, meta = "fused", fused(ins)
      if meta is None:
        source, meta = "operand", nearest(name, lambda n: raw[n].operands)
      if meta is None:
        source, meta = "user", nearest(name, users.__getitem__)
      if meta is None:
        source, meta = "none", ins
    ops[name] = Op(ins.opcode, meta.op_name, stack(meta.frame), source)
  return module, ops


def load_trace_events(log_dir: str) -> list[dict]:
  """The trace events of the newest `*.trace.json.gz` the profiler wrote under `log_dir`."""
  paths = glob.glob(os.path.join(log_dir, "**", "*trace.json.gz"), recursive=True)
  if not paths:
    raise FileNotFoundError(f"no *.trace.json.gz under {log_dir}")
  # Prefer the converted trace (vm.trace.json.gz) to the Perfetto copy: the same events.
  paths.sort(key=lambda p: (os.path.getmtime(p), "perfetto" not in os.path.basename(p)))
  with gzip.open(paths[-1], "rt") as f:
    data = json.load(f)
  return data["traceEvents"] if isinstance(data, dict) else data


def thunk_events(events: Iterable[dict], module: str) -> list[dict]:
  """Complete events of `module`'s instructions (XLA:CPU thunks; device ops elsewhere)."""
  out = []
  for e in events:
    args = e.get("args") or {}
    if e.get("ph") == "X" and "hlo_op" in args and args.get("hlo_module", module) == module:
      out.append(e)
  return out


@dataclasses.dataclass
class PartTime:
  wall_us: float = 0.0  # Wall clock attributed to the part.
  busy_us: float = 0.0  # Thread time of its thunks (concurrent thunks both count).
  fwd_us: float = 0.0
  bwd_us: float = 0.0
  thunks: int = 0


def attribute(
  events: list[dict], ops: Mapping[str, Op], classify: Callable[[Op | None], tuple[str, str]]
) -> tuple[dict[str, PartTime], dict[str, PartTime], float]:
  """Splits the thunks' wall time between parts.

  Returns:
    ({part: PartTime}, {part/detail: PartTime}, microseconds covered by some thunk).
  """
  labels = []
  for e in events:
    op = ops.get(e["args"]["hlo_op"])
    part, detail = classify(op)
    labels.append((part, detail, op.phase if op else "other", op is not None and op.opcode))
  container = [lab[3] in CONTAINER_OPCODES for lab in labels]

  parts: dict[str, PartTime] = collections.defaultdict(PartTime)
  details: dict[str, PartTime] = collections.defaultdict(PartTime)

  def add(i: int, field: str, us: float) -> None:
    part, detail, phase, _ = labels[i]
    for bucket in (parts[part], details[f"{part}/{detail}"]):
      setattr(bucket, field, getattr(bucket, field) + us)
      if field == "wall_us" and phase in ("fwd", "bwd"):
        setattr(bucket, f"{phase}_us", getattr(bucket, f"{phase}_us") + us)

  # Thread time: each thunk's duration less that of the thunks nested in it on its thread.
  by_thread = collections.defaultdict(list)
  for i, e in enumerate(events):
    by_thread[(e.get("pid"), e.get("tid"))].append(i)
  for idx in by_thread.values():
    idx.sort(key=lambda i: (events[i]["ts"], -events[i]["dur"]))
    open_: list[int] = []
    own = {i: float(events[i]["dur"]) for i in idx}
    for i in idx:
      while open_ and events[open_[-1]]["ts"] + events[open_[-1]]["dur"] <= events[i]["ts"]:
        open_.pop()
      if open_:
        own[open_[-1]] -= events[i]["dur"]
      open_.append(i)
    for i in idx:
      add(i, "busy_us", max(own[i], 0.0))
      part, detail = labels[i][:2]
      parts[part].thunks += 1
      details[f"{part}/{detail}"].thunks += 1

  # Wall clock: a sweep over start and end points.
  points = []
  for i, e in enumerate(events):
    points.append((float(e["ts"]), 1, i))
    points.append((float(e["ts"]) + float(e["dur"]), 0, i))
  points.sort()
  leaves: set[int] = set()
  loops: set[int] = set()
  covered = 0.0
  prev = None
  for t, is_start, i in points:
    if prev is not None and t > prev:
      dt = t - prev
      if leaves:
        covered += dt
        for j in leaves:
          add(j, "wall_us", dt / len(leaves))
      elif loops:
        covered += dt
        add(max(loops, key=lambda j: events[j]["ts"]), "wall_us", dt)
    target = loops if container[i] else leaves
    if is_start:
      target.add(i)
    else:
      target.discard(i)
    prev = t
  return dict(parts), dict(details), covered


def profile(
  compiled,
  run_step: Callable[[], object],
  classify: Callable[[Op | None], tuple[str, str]],
  steps: int = 3,
  log_dir: str | None = None,
) -> dict:
  """Runs `run_step()` (one call of `compiled`, blocking) `steps` times under the profiler.

  Returns a dict: `step_ms` (host wall time per step, traced), `span_ms` (per step, first
  thunk start to last thunk end), `covered_ms` (per step, some thunk running), `busy_ms`
  (thread time per step), `parts` and `details` ({name: {ms, busy_ms, fwd_ms, bwd_ms,
  thunks}}, per step), `thunks` (per step) and `unknown_ops` (thunks not found in the HLO
  text).
  """
  import jax

  hlo = compiled.as_text()
  module, ops = parse_hlo(hlo)
  with tempfile.TemporaryDirectory(prefix="step_profile_") as tmp:
    if log_dir:  # Kept: the HLO text next to the trace, to look ops up in.
      os.makedirs(log_dir, exist_ok=True)
      with open(os.path.join(log_dir, f"{module}.hlo.txt"), "w") as f:
        f.write(hlo)
    log_dir = log_dir or tmp
    times = []
    with jax.profiler.trace(log_dir, create_perfetto_trace=True):
      for _ in range(steps):
        start = time.perf_counter()
        run_step()
        times.append(time.perf_counter() - start)
    events = thunk_events(load_trace_events(log_dir), module)
  if not events:
    raise RuntimeError(f"the trace holds no events of module {module!r}")
  parts, details, covered = attribute(events, ops, classify)
  # Each execution's span, first thunk start to last thunk end (`run_id` tells them apart).
  runs: dict[str, list[float]] = {}
  for e in events:
    span = runs.setdefault(str(e["args"].get("run_id")), [float("inf"), float("-inf")])
    span[0] = min(span[0], float(e["ts"]))
    span[1] = max(span[1], float(e["ts"]) + float(e["dur"]))
  unknown = sum(e["args"]["hlo_op"] not in ops for e in events)

  def per_step(t: PartTime) -> dict:
    return {
      "ms": t.wall_us / 1e3 / steps,
      "busy_ms": t.busy_us / 1e3 / steps,
      "fwd_ms": t.fwd_us / 1e3 / steps,
      "bwd_ms": t.bwd_us / 1e3 / steps,
      "thunks": t.thunks // steps,
    }

  return {
    "steps": steps,
    "step_ms": 1e3 * sum(times) / steps,
    "covered_ms": covered / 1e3 / steps,
    "span_ms": sum(b - a for a, b in runs.values()) / 1e3 / steps,
    "busy_ms": sum(t.busy_us for t in parts.values()) / 1e3 / steps,
    "thunks": len(events) // steps,
    "unknown_ops": unknown,
    "parts": {k: per_step(v) for k, v in parts.items()},
    "details": {k: per_step(v) for k, v in details.items()},
  }


def innermost(scopes: list[str], names: Mapping[str, str]) -> str | None:
  """The part of the innermost scope in `names`, or None."""
  for s in reversed(scopes):
    if s in names:
      return names[s]
  return None
