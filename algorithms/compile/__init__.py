"""torch.compile: the run's forward (and, by default, its loss) compiled by TorchDynamo + Inductor.

Inductor fuses the elementwise work between matmuls (bias + GELU, residual + LayerNorm, dropout,
casts, the softmax of the loss) into generated Triton (GPU) or C++ (CPU) kernels. Compilation
costs tens of seconds on the first step(s), so it pays off on runs of more than a few minutes.
It wraps `State.forward_fn` / `State.loss_fn` rather than the model, so the model's state_dict keys
never change and it compiles whatever forward and loss the other algorithms installed: it runs at
INIT in the WRAP order class, after all surgery. A loss that takes the hidden states (the fused
cross-entropy) is compiled as one function with the forward (one graph with one backward, as a
hand-written `loss = model(x)` compiles; `ForwardAndLoss`), and the Trainer still calls them as
two, with its events between them. When an algorithm varies the sequence length
(`dynamic_seq_len`), the sequence dimension is marked dynamic so each new length does not
recompile. The number of graph breaks (places Dynamo had to fall back to Python) is reported after
the first training step as `compile/graph_breaks` in metrics.jsonl: 0 means one graph per function.
Source: Ansel et al., 2024, "PyTorch 2" (ASPLOS).
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, Callable

import pydantic
import torch
import torch._dynamo

from composerlite import Algorithm, Event, Logger, Order, State


def check_mode(mode: str | None) -> str | None:
    """A torch.compile mode this PyTorch knows (the list differs across versions)."""
    known = ["default", *torch._inductor.list_mode_options()]
    if mode is not None and mode not in known:
        raise ValueError(f"unknown compile mode {mode!r}; this PyTorch has {', '.join(dict.fromkeys(known))}")
    return mode


def check_backend(backend: str) -> str:
    known = torch._dynamo.list_backends(exclude_tags=())
    if backend not in known:
        raise ValueError(f"unknown compile backend {backend!r}; e.g. inductor, aot_eager, eager")
    return backend


# Option types that other algorithms' options reuse (fused_kernels), checked when the options are.
CompileMode = Annotated[str | None, pydantic.AfterValidator(check_mode)]
CompileBackend = Annotated[str, pydantic.AfterValidator(check_backend)]


class CompileOptions(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    mode: CompileMode = pydantic.Field(
        None, description="torch.compile mode: default, reduce-overhead, max-autotune, max-autotune-no-cudagraphs"
    )
    backend: CompileBackend = pydantic.Field("inductor", description="torch.compile backend (inductor; eager/aot_eager trace only)")
    fullgraph: bool = pydantic.Field(False, description="fail on any graph break instead of falling back")
    compile_loss: bool = pydantic.Field(True, description="also compile State.loss_fn (a fused loss that disables Dynamo runs as it is)")


def dynamo_counts() -> dict[str, int]:
    """Process-wide Dynamo counters: graph breaks and compiled graphs so far."""
    from torch._dynamo.utils import counters

    return {"graph_breaks": sum(counters["graph_break"].values()), "graphs": counters["stats"]["unique_graphs"]}


def count_graph_breaks(fn: Callable, *args: Any, **kwargs: Any) -> int:
    """Graph breaks Dynamo finds when tracing `fn(*args, **kwargs)` (runs it once, uncompiled)."""
    return torch._dynamo.explain(fn)(*args, **kwargs).graph_break_count


def _seq_dynamic(compiled: Callable, first: Any, batch: dict) -> Any:
    torch._dynamo.mark_dynamic(batch["input_ids"], 1)
    return compiled(first, batch)


def compile_fn(fn: Callable, *, mode: str | None, backend: str, fullgraph: bool, dynamic_seq_len: bool) -> Callable:
    """`fn(x, batch)` compiled; with dynamic_seq_len the batch's sequence dimension is dynamic."""
    compiled = torch.compile(fn, mode=mode, backend=backend, fullgraph=fullgraph)
    return functools.partial(_seq_dynamic, compiled) if dynamic_seq_len else compiled


def _tensor_versions(*objects: Any) -> tuple:
    """(identity, version counter) of every tensor in `objects` (tensors, tuples, lists, dicts,
    ModelOutputs): a tensor changed in place since has a higher version."""
    found, stack = [], list(objects)
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            found.append((id(item), item._version))
        elif isinstance(item, (tuple, list)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
    return tuple(found)


class ForwardAndLoss:
    """The run's forward and loss compiled as ONE function, so they trace into one graph (one
    backward graph, one guard check a step; the head and the loss fuse with the trunk), still
    presented as the two functions the Trainer calls between its events:
      * `forward(model, batch)` runs the joint graph, keeps its loss and returns the outputs;
      * `loss(outputs, batch)` returns that loss when called with those very outputs and batch,
        unchanged since (tensor version counters see in-place changes); otherwise it computes the
        loss of what it was given with the loss function compiled on its own (on first use), so an
        algorithm that replaces or edits the outputs between the two still gets their loss.
    With `shared_eval=False` (evaluation uses another loss), forwards without gradients (evaluation)
    run the forward alone, not the training loss.

    Used when the loss function asks for it (`compile_with_forward = True`, the fused
    cross-entropy): the outputs leave the joint graph too, and autograd gives an output that the
    loss did not come through a zero gradient, which for hidden states is a [batch, seq, d_model]
    fill, but for logits would be a [batch, seq, vocab] one (3.3 GB at 32 x 1024 in bf16): there the
    two graphs pass the logits' real gradient instead and stay separate."""

    def __init__(self, forward_fn: Callable, loss_fn: Callable, shared_eval: bool, **options: Any):
        def forward_and_loss(model, batch):
            outputs = forward_fn(model, batch)
            return outputs, loss_fn(outputs, batch)

        self.joint = compile_fn(forward_and_loss, **options)
        self.forward_alone = compile_fn(forward_fn, **options)
        self.loss_alone = compile_fn(loss_fn, **options)
        self.shared_eval = shared_eval
        self._pending: tuple | None = None  # (outputs, batch, loss, versions) of the last joint call

    def forward(self, model: torch.nn.Module, batch: dict) -> Any:
        self._pending = None
        if not (self.shared_eval or torch.is_grad_enabled()):
            return self.forward_alone(model, batch)
        outputs, loss = self.joint(model, batch)
        self._pending = (outputs, batch, loss, _tensor_versions(outputs, batch))
        return outputs

    def loss(self, outputs: Any, batch: dict) -> torch.Tensor:
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] is outputs and pending[1] is batch \
                and pending[3] == _tensor_versions(outputs, batch):
            return pending[2]
        return self.loss_alone(outputs, batch)


def apply_compile(state: State, mode: str | None = None, backend: str = "inductor", fullgraph: bool = False,
                  compile_loss: bool = True) -> list[str]:
    """Compile the run's forward (and loss, as one function with it: `ForwardAndLoss`); returns what
    was compiled. A loss_fn decorated with `torch.compiler.disable` still runs uncompiled: Dynamo
    skips it."""
    dynamic = any(getattr(algorithm, "dynamic_seq_len", False) for algorithm in state.algorithms)
    options = {"mode": mode, "backend": backend, "fullgraph": fullgraph, "dynamic_seq_len": dynamic}
    if not compile_loss:
        state.forward_fn = compile_fn(state.forward_fn, **options)
        return ["forward_fn"]
    # Evaluation shares the compiled loss when it is the same function (plain cross-entropy
    # trained); a different training objective leaves the eval loss as it is.
    shared = state.eval_loss_fn is state.loss_fn
    if getattr(state.loss_fn, "compile_with_forward", False):
        joint = ForwardAndLoss(state.forward_fn, state.loss_fn, shared_eval=shared, **options)
        state.forward_fn, state.loss_fn = joint.forward, joint.loss
    else:
        state.forward_fn = compile_fn(state.forward_fn, **options)
        state.loss_fn = compile_fn(state.loss_fn, **options)
    if shared:
        state.eval_loss_fn = state.loss_fn
    return ["forward_fn", "loss_fn"]


class Compile(Algorithm):
    """torch.compile the forward and loss (after all surgery); reports graph breaks."""

    name = "compile"
    Options = CompileOptions
    provides = ("compile",)
    order = Order.WRAP

    def __init__(self, **options):
        super().__init__(**options)
        self.compiled: list[str] = []
        self.report: dict[str, int] = {}
        self._before: dict[str, int] | None = None

    def match(self, event: Event, state: State) -> bool:
        return event is Event.INIT or (event is Event.BATCH_END and self._before is not None)

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        if event is Event.INIT:
            self._before = dynamo_counts()
            self.compiled = apply_compile(state, **self.options.model_dump())
            return
        after = dynamo_counts()  # after the first step: every training graph has been traced
        self.report = {key: after[key] - self._before[key] for key in after}
        self._before = None
        logger.log_metrics({f"compile/{key}": value for key, value in self.report.items()})

    def state_dict(self) -> dict[str, Any]:
        return {"options": self.options.model_dump(), "compiled": self.compiled, **self.report}
