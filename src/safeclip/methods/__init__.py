"""Ways of making a CLIP safe behind one interface: ``safe-clip``, ``safer-clip``, ``uwm``.

    from safeclip.methods import get_method, MethodInputs
    bundle = get_method("safer-clip")(MethodInputs(base="demo/base", train="demo/world/train.jsonl", out_dir="m"))
"""

from safeclip.methods.base import METHOD_NAMES, Budget, MethodInputs, get_method

__all__ = ["METHOD_NAMES", "Budget", "MethodInputs", "get_method"]
