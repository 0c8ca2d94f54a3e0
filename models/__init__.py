"""composerlite.models: the GPT-2 family (family.py), its builder (gpt2.py) and what Kaplan's
scaling law expects of it (scaling.py)."""

import importlib

from .family import FAMILY, ModelSpec, Recipe, get_spec

# Imported on first use: they import torch and transformers, which checking a model name does not need.
_LAZY = {
    **dict.fromkeys(["build_model", "count_parameters", "flops_per_token"], ".gpt2"),
    **dict.fromkeys(["KAPLAN", "KaplanConstants", "Proposal", "predicted_loss", "predicted_ppl", "propose"], ".scaling"),
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FAMILY", "ModelSpec", "Recipe", "build_model", "count_parameters", "flops_per_token", "get_spec",
    "KAPLAN", "KaplanConstants", "Proposal", "predicted_loss", "predicted_ppl", "propose",
]
