"""torchext: the autograd lesson's operators as Triton kernels, drop-in for their torch twins."""

from torchext.sin import cos, sin

__all__ = ["cos", "sin"]
