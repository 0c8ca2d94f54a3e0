"""Step anatomy: the fused_kernels bundle's training step against the hand-written anchor's, counted.

The bundle reaches ~0.6x a hand-written minimal GPT-2 on one GPU (issue 24). Most of what separates
the two steps can be counted without a GPU, so this script counts it, for each of:

  bundle eager          the Trainer with `fused_kernels` (compile off), as `composerlite run` runs it
  bundle compiled       the Trainer with `fused_kernels:compile=true`
  bundle compiled, bare loop   the same compiled forward, loss and optimizer in the anchor's loop (no
                        Trainer): what the Trainer itself adds
  anchor eager          the anchor's NanoGPT (packed QKV, SDPA, tied head, vocabulary 50304, fused
                        AdamW) in the anchor's loop (shared/anchors/gpu_ceiling.py's `bench`)
  anchor compiled       the same, `torch.compile(model)`

per step: top-level aten ops dispatched (torch.profiler), compiled graphs, graph breaks and
recompilations (Dynamo's counters and guard failures), compiled regions entered, the kernels the
compiled graphs generate (Inductor's output code: fused kernels, library calls, fallbacks, and the
buffers as large as a sequence's logits), host-device sync points (`aten::_local_scalar_dense` =
`.item()`/`int()`/`bool()` on a tensor, data-dependent shapes such as `nonzero`, and Python-level
`.tolist()`/`.cpu()`/`.numpy()`), each with its call site, SDPA calls with a materialized mask, dtype
copies and dropout calls; plus the models' parameters, buffers and optimizer groups. Then the methods
that change shapes during training (seq_len_warmup, batch_size_warmup, attention_window_warmup) run a
few steps each with the compiled bundle, on a small model, and their compilations are counted.

It writes one JSON record (machine, torch, transformers, date, git commit) and prints a table: each
difference, its count per step for the bundle and the anchor, and whether it must remain (why) or
can go. On a CUDA device it also records the device's busy fraction, kernels per step and top kernels.

    python benchmarks/step_anatomy.py                              # gpt2-52m, 4 x 1024 on CPU (~12 min on 2 cores)
    python benchmarks/step_anatomy.py --device cuda --batch-size 32 --out $OUT/step_anatomy_gpu.json
    python benchmarks/step_anatomy.py --model gpt2-tiny --batch-size 2 --seq-len 64 --shape-steps 0

The anchor's model is carried here as a verbatim copy of `Block` and `NanoGPT` from
`shared/anchors/gpu_anchor.py` (that folder is not part of the repository, so a clean clone and CI
could not import it). When the original is reachable (`$ANCHORS_DIR`, `./shared/anchors` or
`../shared/anchors`), the copy's source is compared with it and the script stops with a one-line
message if they differ, so the comparison is always against the model the ceiling measures.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from composerlite import Callback  # noqa: E402
from composerlite.core.logger import Logger  # noqa: E402
from composerlite.models import build_model  # noqa: E402
from composerlite.observe.speed_monitor import device_name  # noqa: E402
from composerlite.registry import build_algorithm, split_spec  # noqa: E402
from composerlite.run.loop import Trainer, autocast, seed_everything  # noqa: E402
from composerlite.run.throughput import RandomTokens, write_json  # noqa: E402
from composerlite.system.runtime import PRECISIONS, resolve_runtime  # noqa: E402

# ---- the anchor's model: copied verbatim from shared/anchors/gpu_anchor.py (Block, NanoGPT) -------
VOCAB = 50257


class Block(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.h = h
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.out = nn.Linear(4 * d, d)

    def forward(self, x):
        B_, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B_, T, self.h, C // self.h).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).contiguous().view(B_, T, C))
        return x + self.out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class NanoGPT(nn.Module):
    def __init__(self, n_layer, n_embd, n_head, vocab=VOCAB, n_pos=1024):
        super().__init__()
        self.wte = nn.Embedding(vocab, n_embd)
        self.wpe = nn.Embedding(n_pos, n_embd)
        self.blocks = nn.ModuleList(Block(n_embd, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab, bias=False)
        self.head.weight = self.wte.weight
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, idx):
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for blk in self.blocks:
            x = blk(x)
        logits = self.head(self.ln_f(x))
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)).float(), idx[:, 1:].reshape(-1))
# ---- end of the copy ----------------------------------------------------------------------------

CEILING_VOCAB = 50304  # gpu_ceiling.py's padded row, the one the bundle is judged against


def find_anchor(explicit: str | None) -> Path | None:
    candidates = [explicit] if explicit else [os.environ.get("ANCHORS_DIR"), ROOT / "shared" / "anchors",
                                              ROOT.parent / "shared" / "anchors"]
    for folder in candidates:
        if folder and (Path(folder) / "gpu_anchor.py").is_file():
            return Path(folder) / "gpu_anchor.py"
    return None


def _definitions(source: str) -> dict[str, str]:
    """Top-level classes and assignments of a module, by name, as source text."""
    import ast

    found = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef):
            found[node.name] = ast.get_source_segment(source, node)
        elif isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            found[node.targets[0].id] = ast.get_source_segment(source, node)
    return found


def check_anchor_copy(path: Path | None) -> str:
    """'identical to <path>' or 'not found: ...'; exits with one line if the copy has drifted."""
    if path is None:
        return "the anchor's file was not found ($ANCHORS_DIR, ./shared/anchors, ../shared/anchors): the copy is unchecked"
    ours, theirs = _definitions(Path(__file__).read_text()), _definitions(path.read_text())
    for name in ("Block", "NanoGPT", "VOCAB"):
        if ours.get(name) != theirs.get(name):
            raise SystemExit(f"step_anatomy.py's copy of {name} differs from {path}'s: copy it again")
    return f"identical to {path} (Block, NanoGPT, VOCAB)"


# ---- what a step dispatches ---------------------------------------------------------------------

# aten ops that read a device value on the host: each waits for the device's queue to drain.
SCALAR_READ = "aten::_local_scalar_dense"  # .item(), int(t), float(t), bool(t), `if t:`
DATA_DEPENDENT = ("aten::nonzero", "aten::masked_select", "aten::_unique2", "aten::unique_dim", "aten::unique_consecutive",
                  "aten::bincount", "aten::histc", "aten::repeat_interleave", "aten::_assert_async")
# Python-level reads of a whole tensor (not dispatched as their own aten op)
HOST_METHODS = ("tolist", "cpu", "numpy")
# Sites whose scalar read is of a tensor that stays in host memory on a GPU run too (no device sync).
HOST_RESIDENT_SITES = {
    "attention_window_warmup": "the window is a 0-dim CPU tensor (changed in place), read for the mask cache's key",
}
REPO_FRAME = re.compile(r"(composerlite|algorithms|benchmarks|models|transformers)/[^()]*\.py\(\d+\): \S+")
CAST_OPS = ("aten::_to_copy",)
DROPOUT_OPS = ("aten::dropout", "aten::native_dropout", "aten::bernoulli_", "aten::feature_dropout")
SDPA_OPS = ("aten::scaled_dot_product_attention",)
COMPILED_REGION = ("Torch-Compiled Region", "CompiledFunction")


def _site(event) -> str:
    """The nearest Python frame of this repository or transformers that led to `event`."""
    parent, first = event.cpu_parent, None
    while parent is not None:
        name = parent.name
        if ".py(" in name:
            first = first or name
            match = REPO_FRAME.search(name)
            if match:
                return match.group(0)
        parent = parent.cpu_parent
    return first or "(no Python frame)"


def _ancestors(event):
    parent = event.cpu_parent
    while parent is not None:
        yield parent.name
        parent = parent.cpu_parent


# a scalar read under these is the Python-level read itself; under any other aten op it is that
# op's CPU implementation reading host memory (the CPU fused AdamW reads each `step` this way)
SCALAR_READ_CALLERS = ("aten::item", "aten::is_nonzero", "aten::_local_scalar_dense")


def count_events(prof: profile, steps: int) -> dict[str, Any]:
    """Per-step counts from a CPU trace recorded with stacks and shapes."""
    top_level: collections.Counter = collections.Counter()
    syncs: collections.Counter = collections.Counter()
    host_reads: collections.Counter = collections.Counter()
    casts = dropout = regions = 0
    sdpa_masked = sdpa_plain = 0
    lookup_us = 0.0
    outside: collections.Counter = collections.Counter()
    for event in prof.events():
        name = event.name
        if name.startswith("aten::"):
            ancestors = list(_ancestors(event))
            aten_ancestors = [a for a in ancestors if a.startswith("aten::")]
            nested = bool(aten_ancestors)
            if not nested:
                top_level[name] += 1
                if not any("Compiled" in a for a in ancestors):
                    outside[name] += 1
            if name in CAST_OPS:
                casts += 1
            if name in DROPOUT_OPS and not nested:
                dropout += 1
            if name in SDPA_OPS:
                shapes = event.input_shapes or []
                if len(shapes) > 3 and shapes[3]:
                    sdpa_masked += 1
                else:
                    sdpa_plain += 1
            own_read = name == SCALAR_READ and all(a in SCALAR_READ_CALLERS for a in aten_ancestors)
            if own_read or (name in DATA_DEPENDENT and not nested):
                site = _site(event)
                host = next((why for key, why in HOST_RESIDENT_SITES.items() if key in site), None)
                (host_reads if host else syncs)[f"{name.removeprefix('aten::')} @ {site}"] += 1
        elif name.startswith("<built-in method ") and " of Tensor object" in name:
            method = name.removeprefix("<built-in method ").split(" ", 1)[0]
            if method in HOST_METHODS:
                syncs[f"Tensor.{method} @ {_site(event)}"] += 1
        elif name.startswith(COMPILED_REGION[0]):
            regions += 1
        elif name == "TorchDynamo Cache Lookup":
            lookup_us += event.cpu_time_total
    per = lambda counter: {key: value / steps for key, value in counter.most_common()}
    by_time = sorted((e for e in prof.key_averages() if e.key.startswith("aten::")), key=lambda e: e.self_cpu_time_total,
                     reverse=True)
    return {
        "top_aten_ops_by_self_cpu_ms": {e.key: round(e.self_cpu_time_total / 1e3 / steps, 2) for e in by_time[:12]},
        "top_level_aten_ops_per_step": sum(top_level.values()) / steps,
        "top_level_aten_ops": per(top_level),
        "aten_ops_outside_compiled_code_per_step": sum(outside.values()) / steps,
        "aten_ops_outside_compiled_code": per(outside),
        "syncs_per_step": sum(syncs.values()) / steps,
        "syncs": per(syncs),
        "host_scalar_reads_no_device_sync": per(host_reads),
        "compiled_regions_per_step": regions / steps,
        "dynamo_cache_lookup_ms_per_step": lookup_us / 1e3 / steps,
        "dtype_copies_per_step": casts / steps,
        "dropout_calls_per_step": dropout / steps,
        "sdpa_calls_eager": {"with_mask": sdpa_masked / steps, "without_mask": sdpa_plain / steps},
    }


def device_summary(prof: profile, device: torch.device, steps: int, step_s: float) -> dict[str, Any]:
    """On CUDA: the device's busy time, kernels and synchronizing runtime calls per step (profile_step's)."""
    if device.type != "cuda":
        return {}
    from profile_step import summarize

    summary = summarize(prof, device, steps, top=15)
    busy = summary["device_busy_ms_per_step"]
    return {"device_busy_ms_per_step": busy, "device_busy_fraction": busy / (step_s * 1e3) if busy else None,
            "kernels_per_step": summary["device_ops_per_step"], "top_kernels": summary["top"],
            "synchronizing_runtime_calls_per_step": summary["synchronizing_calls_per_step"]}


# ---- what the compiled graphs generate ----------------------------------------------------------

_ALLOC = re.compile(r"empty_strided(?:_cpu|_cuda|_xpu)?\(\((?P<shape>[^)]*)\)")
_SDPA_CALL = re.compile(r"(?P<op>_scaled_dot_product_\w+)\.default\((?P<args>.*)\)\s*$")
# where the SDPA ops Inductor calls take their mask positionally (the CPU flash ops take `attn_mask=`;
# CUDA's flash ops take none)
_MASK_POSITION = {"_scaled_dot_product_efficient_attention": 3, "_scaled_dot_product_cudnn_attention": 3,
                  "_scaled_dot_product_efficient_attention_backward": 4, "_scaled_dot_product_cudnn_attention_backward": 4}


def _split_args(text: str) -> list[str]:
    """Top-level comma-separated arguments of a call's argument text."""
    args, depth, current = [], 0, ""
    for char in text:
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        if char == "," and depth == 0:
            args.append(current.strip())
            current = ""
        else:
            current += char
    return [*args, current.strip()] if current.strip() else args


def _sdpa_has_mask(op: str, args_text: str) -> bool:
    args = _split_args(args_text)
    keyword = next((a.split("=", 1)[1] for a in args if a.startswith(("attn_mask=", "attn_bias="))), None)
    if keyword is None and op in _MASK_POSITION and len(args) > _MASK_POSITION[op] and "=" not in args[_MASK_POSITION[op]]:
        keyword = args[_MASK_POSITION[op]]
    return keyword is not None and keyword != "None"


def analyze_code(sources: list[str], logit_elements: int) -> dict[str, Any]:
    """Count, over Inductor's output modules, the kernel launches of each module's `call` (each
    module runs once a training step: forward and backward of every graph), the buffers it
    allocates, and those holding at least one sequence's logits (`logit_elements`)."""
    modules = []
    for source in sources:
        body = source.split("def call(", 1)[-1]
        fused = len(re.findall(r"^\s+(?:cpp_fused_\w+|triton_\w+\.run)\(", body, re.M))
        library = len(re.findall(r"^\s+(?:\w+ = )?extern_kernels\.\w+\(", body, re.M))
        fallback = len(re.findall(r"^\s+(?:\w+ = )?torch\.ops\.\w+\.\w+\.\w+\(", body, re.M))
        sizes = []
        for match in _ALLOC.finditer(body):
            dims = [d.strip() for d in match.group("shape").split(",") if d.strip()]
            try:
                sizes.append(int(eval("*".join(dims) or "1", {}, {})))  # symbolic sizes (s0) are skipped
            except Exception:
                pass
        masked = plain = 0
        for line in body.splitlines():
            found = _SDPA_CALL.search(line)
            if found:
                if _sdpa_has_mask(found.group("op"), found.group("args")):
                    masked += 1
                else:
                    plain += 1
        modules.append({"fused_kernels": fused, "library_calls": library, "fallback_ops": fallback,
                        "buffers": len(sizes), "logit_sized_buffers": sum(s >= logit_elements for s in sizes),
                        "logit_sized_gib": sum(s for s in sizes if s >= logit_elements) * 4 / 2**30,
                        "sdpa_with_mask": masked, "sdpa_without_mask": plain,
                        "packed_sequence_check": "packed_sequence_mask" in body})
    total = lambda key: sum(m[key] for m in modules)
    return {"modules": len(modules), "kernels_per_step": total("fused_kernels") + total("library_calls") + total("fallback_ops"),
            "fused_kernels": total("fused_kernels"), "library_calls": total("library_calls"),
            "fallback_ops": total("fallback_ops"), "buffers": total("buffers"),
            "logit_sized_buffers": total("logit_sized_buffers"), "logit_sized_gib_if_fp32": total("logit_sized_gib"),
            "sdpa_with_mask": total("sdpa_with_mask"), "sdpa_without_mask": total("sdpa_without_mask"),
            "modules_with_packed_sequence_check": sum(m["packed_sequence_check"] for m in modules),
            "per_module": modules}


def dynamo_state() -> dict[str, Any]:
    from torch._dynamo.utils import counters, guard_failures

    reasons = [str(reason)[:300] for failures in guard_failures.values() for reason in failures]
    # At each recompilation Dynamo records why every cached entry of that frame failed ("F/E: why",
    # entry E of frame F), so the first entry's failures ("F/0: ...") count the recompilations.
    first_entry = [reason for reason in reasons if re.match(r"\d+/0: ", reason)]
    recompiles = len(first_entry) if first_entry or not reasons else len(reasons)
    breaks = collections.Counter({str(k)[:200]: v for k, v in counters["graph_break"].items()})
    return {"graphs": counters["stats"]["unique_graphs"], "graph_breaks": sum(breaks.values()),
            "graph_break_reasons": dict(breaks.most_common(5)), "recompiles": recompiles,
            "recompile_reasons": list(dict.fromkeys(reasons))[:8], "frames_compiled": counters["frames"]["ok"]}


def reset_dynamo() -> None:
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()


# ---- the variants ------------------------------------------------------------------------------


class Steps:
    """Drives the timed and profiled windows from a step-end hook (the Trainer's BATCH_END, or the
    bare loop's end of step): `warmup` steps (compilation), `timed` unprofiled, `profiled` traced."""

    def __init__(self, warmup: int, timed: int, profiled: int, device: torch.device):
        self.warmup, self.timed, self.profiled, self.device = warmup, timed, profiled, device
        self.total = warmup + timed + profiled
        self.done = 0
        self.marks: dict[str, float] = {}
        self.dynamo_after_warmup: dict[str, Any] = {}
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        self.profiler = profile(activities=activities, with_stack=True, record_shapes=True)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def start(self) -> None:
        self.marks["start"] = time.perf_counter()
        if self.warmup == 0:
            self._after_warmup()

    def _after_warmup(self) -> None:
        self._sync()
        self.marks["warm"] = time.perf_counter()
        self.dynamo_after_warmup = dynamo_state()

    def step_end(self) -> None:
        self.done += 1
        if self.done == self.warmup:
            self._after_warmup()
        if self.done == self.warmup + self.timed:
            self._sync()
            self.marks["timed"] = time.perf_counter()
            self.profiler.start()
        if self.done == self.total:
            self._sync()
            self.profiler.stop()
            self.marks["end"] = time.perf_counter()

    def result(self) -> dict[str, Any]:
        step_s = (self.marks["timed"] - self.marks["warm"]) / self.timed if self.timed else None
        return {"warmup_s": self.marks["warm"] - self.marks["start"], "step_s": step_s,
                "profiled_step_s": (self.marks["end"] - self.marks["timed"]) / self.profiled}


class StepHook(Callback):
    def __init__(self, steps: Steps):
        self.steps = steps
        self.forward_returns: str | None = None

    def after_forward(self, state, logger) -> None:
        self.forward_returns = type(state.outputs).__name__

    def fit_start(self, state, logger) -> None:
        self.steps.start()

    def batch_end(self, state, logger) -> None:
        self.steps.step_end()


def capture_code() -> tuple[list[str], Any]:
    from torch._inductor.graph import GraphLowering

    sources: list[str] = []
    return sources, mock.patch.object(GraphLowering, "save_output_code", sources.append)


def describe_model(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    params = list(model.parameters())
    dropouts = [m.p for m in model.modules() if isinstance(m, nn.Dropout)]
    layouts = collections.Counter(type(m).__name__ for m in model.modules() if len(list(m.parameters(recurse=False))))
    described = {
        "parameters": sum(p.numel() for p in params), "parameter_tensors": len(params),
        "buffers": {name: list(b.shape) for name, b in model.named_buffers()},
        "dropout_modules": len(dropouts), "dropout_p": sorted(set(dropouts)),
        "modules_with_parameters": dict(layouts),
        "embedding_rows": int(next(m for m in model.modules() if isinstance(m, nn.Embedding)).weight.shape[0]),
    }
    if optimizer is not None:
        defaults = optimizer.defaults
        described["optimizer"] = {"class": type(optimizer).__name__, "param_groups": len(optimizer.param_groups),
                                  "fused": defaults.get("fused"), "foreach": defaults.get("foreach"),
                                  "weight_decay": sorted({g["weight_decay"] for g in optimizer.param_groups})}
    return described


def run_bundle(args, runtime, compiled: bool) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The Trainer with the bundle; returns the Trainer variant and (compiled) its bare-loop variant."""
    device, precision = runtime.device, runtime.precision
    reset_dynamo()
    seed_everything(0)
    model = build_model(args.model, dropout=0.0, n_positions=max(1024, args.seq_len))
    steps = Steps(args.warmup_steps if compiled else min(args.warmup_steps, 1), args.timed_steps, args.steps, device)
    hook = StepHook(steps)
    spec = f"fused_kernels:compile={'true' if compiled else 'false'}"
    sources, patch = capture_code()
    run_dir = Path(tempfile.mkdtemp(prefix="composerlite-anatomy-"))
    try:
        with patch:
            data = RandomTokens(args.batch_size, args.seq_len, model.config.vocab_size, steps.total)
            settings = {"max_duration": f"{steps.total}ba", "run_dir": str(run_dir), "warmup": "0ba",
                        "precision": precision, "device": str(device), "seed": 0}
            trainer = Trainer(settings, model=model, train_data=data, logger=Logger([]),
                              algorithms=[build_algorithm(*split_spec(spec))], callbacks=[hook])
            trainer.fit()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    state = trainer.state
    bundle = next(a for a in state.algorithms if a.name == "fused_kernels")
    logits = args.seq_len * model.config.vocab_size
    record = {
        "what": f"Trainer, {spec}", "applied": bundle.applied, "skipped": bundle.skipped,
        **steps.result(), "final_loss": state.train_loss,
        "dynamo_after_warmup": steps.dynamo_after_warmup, "dynamo": dynamo_state(),
        **count_events(steps.profiler, args.steps),
        **device_summary(steps.profiler, device, args.steps, steps.result()["profiled_step_s"]),
        "model": describe_model(state.model, state.optimizer),
        "forward_returns": hook.forward_returns,
        "batch_pinned": data.batches[0].is_pinned(),  # the host tensors the Trainer copies from
    }
    if compiled:
        record["generated"] = analyze_code(sources, logits)
    bare = run_bare_loop(args, trainer, logits) if compiled else None
    del trainer, model
    return record, bare


def run_bare_loop(args, trainer: Trainer, logit_elements: int) -> dict[str, Any]:
    """The bundle's compiled forward, loss and fused AdamW (already compiled by the Trainer's run) in
    the anchor's loop: no events, no loss read, the batch made on the device."""
    state = trainer.state
    vocab = state.model.config.vocab_size
    unpadded = getattr(state.model.config, "unpadded_vocab_size", None) or vocab
    model, optimizer = state.model, state.optimizer
    model.train()
    steps = Steps(1, args.timed_steps, args.steps, state.device)  # one step re-warms (no compilation expected)

    def step():
        batch = {"input_ids": torch.randint(0, unpadded, (args.batch_size, args.seq_len), device=state.device)}
        with autocast(state):
            loss = state.loss_fn(state.forward_fn(model, batch), batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    before = dynamo_state()
    steps.start()
    for _ in range(steps.total):
        step()
        steps.step_end()
    after = dynamo_state()
    return {"what": "the bundle's compiled forward_fn, loss_fn and optimizer in the anchor's loop", **steps.result(),
            "new_graphs": after["graphs"] - before["graphs"], "new_recompiles": after["recompiles"] - before["recompiles"],
            **count_events(steps.profiler, args.steps),
            **device_summary(steps.profiler, state.device, args.steps, steps.result()["profiled_step_s"])}


def anchor_config(model_name: str) -> dict[str, int]:
    from composerlite.models import get_spec

    spec = get_spec(model_name)
    return {"n_layer": spec.n_layer, "n_embd": spec.d_model, "n_head": spec.n_heads}


def run_anchor(args, runtime, compiled: bool) -> dict[str, Any]:
    """gpu_ceiling.py's `bench` step on this device: NanoGPT(vocab 50304), fused AdamW, autocast in
    the run's precision, the batch drawn on the device, no loss read."""
    device, precision = runtime.device, runtime.precision
    reset_dynamo()
    torch.manual_seed(0)
    model = NanoGPT(**anchor_config(args.model), vocab=CEILING_VOCAB, n_pos=max(1024, args.seq_len)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=True)
    forward = torch.compile(model) if compiled else model
    dtype = PRECISIONS[precision]
    steps = Steps(args.warmup_steps if compiled else min(args.warmup_steps, 1), args.timed_steps, args.steps, device)
    losses = []

    def step():
        x = torch.randint(0, 50257, (args.batch_size, args.seq_len), device=device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = forward(x)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())

    sources, patch = capture_code()
    with patch:
        steps.start()
        for _ in range(steps.total):
            step()
            steps.step_end()
    record = {"what": f"anchor NanoGPT (vocab {CEILING_VOCAB}), fused AdamW{', torch.compile' if compiled else ''}",
              **steps.result(), "final_loss": float(losses[-1]),
              "dynamo_after_warmup": steps.dynamo_after_warmup, "dynamo": dynamo_state(),
              **count_events(steps.profiler, args.steps),
              **device_summary(steps.profiler, device, args.steps, steps.result()["profiled_step_s"]),
              "model": describe_model(model, optimizer), "forward_returns": "Tensor (the loss)"}
    if compiled:
        record["generated"] = analyze_code(sources, args.seq_len * 50257)
    del model, optimizer, forward
    return record


# ---- shapes that change during training -------------------------------------------------------


class ShapeLog(Callback):
    def __init__(self):
        self.shapes: list[tuple[int, int]] = []
        self.windows: list[int] = []

    def before_forward(self, state, logger) -> None:
        self.shapes.append(tuple(state.batch["input_ids"].shape))
        window = next((a for a in state.algorithms if a.name == "attention_window_warmup"), None)
        if window is not None:
            self.windows.append(min(int(window.window), state.batch["input_ids"].shape[1]))


SHAPE_RUNS = {
    "seq_len_warmup": "seq_len_warmup:duration=0.75,min_seq_len={a},step_size={a}",
    "batch_size_warmup": "batch_size_warmup:duration=0.75",
    "attention_window_warmup": "attention_window_warmup:initial_window={a},step_size={a}",
}


def run_shapes(args, runtime) -> dict[str, Any]:
    """Each shape-changing method with the compiled bundle for `shape_steps` steps and an evaluation
    at the end: compilations counted (the recompile reasons say which guard failed)."""
    results = {}
    step = max(args.shape_seq_len // 8, 8)
    for name, template in SHAPE_RUNS.items():
        reset_dynamo()
        seed_everything(0)
        model = build_model(args.shape_model, dropout=0.0, n_positions=max(1024, args.shape_seq_len))
        log = ShapeLog()
        data = RandomTokens(args.shape_batch_size, args.shape_seq_len, model.config.vocab_size, args.shape_steps)
        run_dir = Path(tempfile.mkdtemp(prefix="composerlite-anatomy-"))
        started = time.perf_counter()
        try:
            settings = {"max_duration": f"{args.shape_steps}ba", "run_dir": str(run_dir), "warmup": "0ba",
                        "eval_interval": None, "eval_batches": 2, "precision": runtime.precision,
                        "device": str(runtime.device), "seed": 0}
            trainer = Trainer(settings, model=model, train_data=data, eval_data=RandomTokens(args.shape_batch_size, args.shape_seq_len,
                                                                                            model.config.vocab_size, 2, seed=1),
                              logger=Logger([]), algorithms=[build_algorithm(*split_spec("fused_kernels:compile=true")),
                                          build_algorithm(*split_spec(template.format(a=step)))],
                              callbacks=[log])
            trainer.fit()
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
        dynamo = dynamo_state()
        results[name] = {"spec": template.format(a=step), "model": args.shape_model, "steps": args.shape_steps,
                         "shapes": sorted(set(log.shapes)), "distinct_shapes": len(set(log.shapes)),
                         "windows": sorted(set(log.windows)) if log.windows else None,
                         "seconds": time.perf_counter() - started, **dynamo}
        del trainer, model
    return results


# ---- the table -----------------------------------------------------------------------------------


def rows(variants: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each difference between the bundle's step and the anchor's: counts per step and a verdict."""
    be, bc, ae, ac = (variants.get(k, {}) for k in ("bundle eager", "bundle compiled", "anchor eager", "anchor compiled"))
    bare = variants.get("bundle compiled, bare loop", {})
    table = []

    def row(what, bundle, anchor, verdict):
        table.append({"difference": what, "bundle": bundle, "anchor": anchor, "verdict": verdict})

    if bc and ac:
        if bc.get("step_s") and ac.get("step_s"):
            row("step time, ms (timed steps, no profiler)", f"{bc['step_s'] * 1e3:.1f} (bare loop {bare.get('step_s', 0) * 1e3:.1f})",
                f"{ac['step_s'] * 1e3:.1f}", f"bundle {ac['step_s'] / bc['step_s']:.2f}x the anchor's speed")
        if bc.get("kernels_per_step") is not None and ac.get("kernels_per_step") is not None:
            busy = lambda v: f"{v['device_busy_fraction']:.0%}" if v.get("device_busy_fraction") else "?"
            row("device kernels a step / device busy (profiled steps)", f"{bc['kernels_per_step']:g} / {busy(bc)}",
                f"{ac['kernels_per_step']:g} / {busy(ac)}", "the top kernels by time are in the record")
        gb, ga = bc["dynamo"], ac["dynamo"]
        row("compiled graphs (forward + loss) / regions entered a step",
            f"{gb['graphs']} / {bc['compiled_regions_per_step']:g}", f"{ga['graphs']} / {ac['compiled_regions_per_step']:g}",
            "matches" if gb["graphs"] <= ga["graphs"] else "can go: forward and loss compiled as one function")
        row("graph breaks", gb["graph_breaks"], ga["graph_breaks"], "matches" if gb["graph_breaks"] == 0 else "can go")
        steady = lambda v: v["dynamo"]["recompiles"] - v["dynamo_after_warmup"].get("recompiles", 0)
        row("recompilations after warmup", steady(bc), steady(ac), "matches" if steady(bc) == 0 else "can go")
        gen_b, gen_a = bc.get("generated", {}), ac.get("generated", {})
        if gen_b and gen_a:
            row("generated kernels a step (fused + library + fallback), forward and backward",
                f"{gen_b['kernels_per_step']} ({gen_b['fused_kernels']} + {gen_b['library_calls']} + {gen_b['fallback_ops']})",
                f"{gen_a['kernels_per_step']} ({gen_a['fused_kernels']} + {gen_a['library_calls']} + {gen_a['fallback_ops']})",
                "matches" if gen_b["kernels_per_step"] <= gen_a["kernels_per_step"] else
                f"{gen_b['kernels_per_step'] - gen_a['kernels_per_step']:+d}: per graph in the record (generated.per_module)")
            row("SDPA calls with a materialized mask (compiled)", gen_b["sdpa_with_mask"], gen_a["sdpa_with_mask"],
                "matches" if gen_b["sdpa_with_mask"] <= gen_a["sdpa_with_mask"] else
                "can go: a [batch, 1, seq, seq] mask rules out the flash kernel and computes the masked half")
            row("packed-sequence check in the graph (transformers' mask code)", gen_b["modules_with_packed_sequence_check"],
                gen_a["modules_with_packed_sequence_check"],
                "matches" if not gen_b["modules_with_packed_sequence_check"] else "can go: training positions are never packed")
            row("buffers >= one sequence's logits (compiled)", gen_b["logit_sized_buffers"], gen_a["logit_sized_buffers"],
                "remains: the head GEMM's output and the loss's softmax statistics; the bundle's padded columns are masked")
        row("aten ops outside compiled code a step (Trainer, optimizer, data)",
            f"{bc['aten_ops_outside_compiled_code_per_step']:g} (bare loop "
            f"{bare.get('aten_ops_outside_compiled_code_per_step', float('nan')):g})",
            f"{ac['aten_ops_outside_compiled_code_per_step']:g}",
            "remains: the optimizer step, grad zeroing and the batch copy are in both; see the op list in the record")
        copies = bc["aten_ops_outside_compiled_code"].get("aten::to", 0)
        row("batch copies to the device a step", f"{copies:g} (pinned: {bc.get('batch_pinned')})",
            f"{ac['aten_ops_outside_compiled_code'].get('aten::to', 0):g} (drawn on the device)",
            "remains: the data comes from the host; from pageable memory a CUDA copy may wait for the queue "
            "(RandomTokens is not pinned; `composerlite run`'s loader pins on CUDA)")
        row("Dynamo cache lookups (guards), ms a step", f"{bc['dynamo_cache_lookup_ms_per_step']:.2f}",
            f"{ac['dynamo_cache_lookup_ms_per_step']:.2f}", "host time per compiled call; one call a step is the floor")
    for label, b, a in (("eager", be, ae), ("compiled", bc, ac)):
        if b and a:
            syncs = ", ".join(f"{k} x{v:g}" for k, v in b["syncs"].items()) or "none"
            row(f"host-device syncs a step ({label})", f"{b['syncs_per_step']:g}: {syncs}", f"{a['syncs_per_step']:g}",
                "the Trainer's loss read remains (it decides whether the step is taken: --on-nan); any other can go"
                if b["syncs_per_step"] > a["syncs_per_step"] else "matches")
    if be and ae:
        row("top-level aten ops a step (eager)", f"{be['top_level_aten_ops_per_step']:g}", f"{ae['top_level_aten_ops_per_step']:g}",
            "different modules (HF's Conv1D addmm, lean blocks, chunked loss); the compiled counts are the ones that matter")
        row("dtype/device copies a step (eager, aten::_to_copy)", f"{be['dtype_copies_per_step']:g}", f"{ae['dtype_copies_per_step']:g}",
            "autocast's weight casts are in both; fused into kernels when compiled")
        row("dropout calls a step (eager)", f"{be['dropout_calls_per_step']:g}", f"{ae['dropout_calls_per_step']:g}",
            "matches" if be["dropout_calls_per_step"] <= ae["dropout_calls_per_step"] else "can go: p = 0")
        row("SDPA calls with a mask (eager)", be["sdpa_calls_eager"]["with_mask"], ae["sdpa_calls_eager"]["with_mask"],
            "matches" if be["sdpa_calls_eager"]["with_mask"] <= ae["sdpa_calls_eager"]["with_mask"] else "can go")
        mb, ma = be["model"], ae["model"]
        row("parameters (tensors) / buffers", f"{mb['parameters']:,} ({mb['parameter_tensors']}) / {len(mb['buffers'])}",
            f"{ma['parameters']:,} ({ma['parameter_tensors']}) / {len(ma['buffers'])}",
            "remains: the same model; HF keeps Conv1D's [in, out] layout (checkpoints load into GPT2LMHeadModel)")
        row("embedding rows (vocabulary) / classes in the softmax", f"{mb['embedding_rows']} / 50257", f"{ma['embedding_rows']} / 50304",
            "remains: the bundle masks the 47 padded columns out of the loss (the anchor's softmax includes them: "
            "a slightly different function)")
        ob, oa = mb.get("optimizer", {}), ma.get("optimizer", {})
        row("optimizer param groups (fused AdamW launches per group)", ob.get("param_groups"), oa.get("param_groups"),
            "remains: weight decay on matrices only (two groups) is the trainer's AdamW")
        row("forward's return value", be["forward_returns"], ae["forward_returns"],
            "remains: the loss runs as a separate function (algorithms see the outputs between them)")
    return table


def print_table(table: list[dict[str, Any]]) -> None:
    width = max(len(r["difference"]) for r in table)
    print(f"\n{'difference (per step)':{width}}  {'bundle':>28}  {'anchor':>12}  verdict")
    for r in table:
        bundle = str(r["bundle"])
        print(f"{r['difference']:{width}}  {bundle:>28}  {str(r['anchor']):>12}  {r['verdict']}")


def environment(device: torch.device) -> dict[str, Any]:
    def git(*command):
        try:
            return subprocess.run(["git", *command], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception:
            return None

    cpu = None
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except Exception:
        cpu = platform.processor()
    import transformers

    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "composerlite", "algorithms", "models",
                "benchmarks/step_anatomy.py")
    return {"device_name": device_name(device), "cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "git_commit": git("rev-parse", "HEAD"),
            "git_uncommitted": [line[3:] for line in (dirty or "").splitlines()]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt2-52m")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--warmup-steps", type=int, default=2, help="steps before the timed ones (compilation); eager runs take 1")
    parser.add_argument("--timed-steps", type=int, default=1)
    parser.add_argument("--steps", type=int, default=1, help="profiled steps")
    parser.add_argument("--variants", nargs="*", default=["bundle eager", "bundle compiled", "anchor eager", "anchor compiled"],
                        help="any of: 'bundle eager', 'bundle compiled' (adds its bare loop), 'anchor eager', 'anchor compiled'")
    parser.add_argument("--shape-model", default="gpt2-tiny", help="model of the shape-changing runs")
    parser.add_argument("--shape-batch-size", type=int, default=4)
    parser.add_argument("--shape-seq-len", type=int, default=1024)
    parser.add_argument("--shape-steps", type=int, default=8, help="steps of each shape-changing run (0: skip them)")
    parser.add_argument("--anchors", help="folder of gpu_anchor.py (default: $ANCHORS_DIR, ./shared/anchors, ../shared/anchors)")
    parser.add_argument("--out", help="JSON path (default benchmarks/results/step_anatomy_<device>_<model>_<date>.json)")
    args = parser.parse_args(argv)
    copy_check = check_anchor_copy(find_anchor(args.anchors))
    runtime = resolve_runtime(args.device, args.precision)
    record: dict[str, Any] = {
        "model": args.model, "batch_size": args.batch_size, "seq_len": args.seq_len, "precision": runtime.precision,
        **environment(runtime.device), "anchor_copy": copy_check,
        "protocol": f"per variant: {args.warmup_steps} warmup step(s) (eager: 1), {args.timed_steps} timed, "
                    f"{args.steps} profiled (CPU trace with stacks and shapes); counts are per step",
        "variants": {},
    }
    out = args.out or f"benchmarks/results/step_anatomy_{runtime.device.type}_{args.model}_{datetime.date.today()}.json"
    for name in args.variants:
        started = time.perf_counter()
        if name.startswith("bundle"):
            result, bare = run_bundle(args, runtime, compiled=name == "bundle compiled")
            record["variants"][name] = result
            if bare is not None:
                record["variants"]["bundle compiled, bare loop"] = bare
        elif name.startswith("anchor"):
            record["variants"][name] = run_anchor(args, runtime, compiled=name == "anchor compiled")
        else:
            parser.error(f"unknown variant {name!r}")
        print(f"{name}: {time.perf_counter() - started:.0f} s", flush=True)
        write_json(out, record)  # a job stopped by its time limit keeps the variants it finished
    if args.shape_steps:
        record["shape_changes"] = run_shapes(args, runtime)
    reset_dynamo()
    record["table"] = rows(record["variants"])
    write_json(out, record)
    if record["table"]:
        print_table(record["table"])
    for name, shape in record.get("shape_changes", {}).items():
        print(f"{name} ({shape['model']}, {shape['steps']} steps + eval, {shape['distinct_shapes']} shapes): "
              f"{shape['graphs']} graphs, {shape['recompiles']} recompilations, {shape['graph_breaks']} breaks")
    for name, variant in record["variants"].items():
        step = variant.get("step_s")
        print(f"{name}: step {step:.2f} s" if step else f"{name}: profiled step {variant['profiled_step_s']:.2f} s")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
