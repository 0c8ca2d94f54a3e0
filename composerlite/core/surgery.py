"""Model surgery: replace submodules by type or by a policy, and know how many were replaced.

Surgery belongs at `Event.INIT`: the trainer builds the optimizer after INIT, over the converted
parameters, so replacements need no optimizer bookkeeping. A replacement that matches nothing is
almost always a bug (the model is not the one the algorithm expects), so it raises unless the
caller says zero is fine.

    replaced = replace_modules_by_type(model, {GPT2MLP: lambda module, name: GLUMLP(...)})
    replaced = replace_modules(model, lambda name, module: ... or None)
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from composerlite.errors import ConfigError

# (qualified name, module) -> its replacement, or None to keep it (and look inside it)
Policy = Callable[[str, nn.Module], nn.Module | None]


def replace_modules(model: nn.Module, policy: Policy, *, allow_zero: bool = False,
                    what: str = "the policy") -> dict[str, nn.Module]:
    """Replace every submodule for which `policy(name, module)` returns a module.

    Walks the tree top-down; a replaced module's children are not visited (its replacement is
    final, and a policy is never applied to its own output). The root itself is never replaced.
    Returns {qualified name: replacement} in visiting order. Raises ConfigError when nothing was
    replaced, unless `allow_zero`; `what` names the target in that message.
    """
    replaced: dict[str, nn.Module] = {}
    _replace_children(model, "", policy, replaced)
    if not replaced and not allow_zero:
        raise ConfigError(f"model surgery matched no module of {type(model).__name__} for {what}; nothing was replaced")
    return replaced


def _replace_children(parent: nn.Module, prefix: str, policy: Policy, replaced: dict[str, nn.Module]) -> None:
    for child_name, child in list(parent.named_children()):
        name = f"{prefix}{child_name}"
        replacement = policy(name, child)
        if replacement is None or replacement is child:
            _replace_children(child, f"{name}.", policy, replaced)
            continue
        if not isinstance(replacement, nn.Module):
            raise TypeError(f"surgery policy returned {type(replacement).__name__} for {name}, not a Module")
        setattr(parent, child_name, replacement)  # works for ModuleList/Sequential keys ("0", "1") too
        replaced[name] = replacement


def replace_modules_by_type(
    model: nn.Module,
    factories: dict[type[nn.Module], Callable[[nn.Module, str], nn.Module | None]],
    *,
    allow_zero: bool = False,
) -> dict[str, nn.Module]:
    """Replace each submodule whose exact type is a key of `factories` with
    `factories[type](module, name)` (a factory may return None to keep a module).
    Exact types, not isinstance: a replacement class that subclasses the original (an LPLayerNorm
    is a LayerNorm) must not match again."""

    def policy(name: str, module: nn.Module) -> nn.Module | None:
        factory = factories.get(type(module))
        return factory(module, name) if factory is not None else None

    what = " or ".join(cls.__name__ for cls in factories)
    return replace_modules(model, policy, allow_zero=allow_zero, what=what)


def count_modules(model: nn.Module, module_type: type[nn.Module] | tuple[type[nn.Module], ...]) -> int:
    """How many submodules (the root included) are instances of `module_type`."""
    return sum(isinstance(module, module_type) for module in model.modules())
