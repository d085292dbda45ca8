"""Gram and weighted-combine passes over a [k, n] gradient bank (shipped as ``mogd.kernels``).

The torch paths (``gram_torch``, ``combine_torch``) run anywhere; the Triton kernels live in
``gram_triton`` / ``combine_triton`` and are imported only when asked for, so importing this package
never imports triton.
"""

from .combine_torch import combine_torch, combine_torch_list
from .gram_torch import gram_torch, gram_torch_list

__all__ = ["combine_torch", "combine_torch_list", "gram_torch", "gram_torch_list"]
