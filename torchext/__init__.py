"""torchext: the autograd lesson's operators as Triton kernels, drop-in for their torch twins."""

from torchext.dot import dot
from torchext.mul import mul
from torchext.norm import norm
from torchext.sin import cos, sin
from torchext.sub import sub
from torchext.sum import sum

__all__ = ["cos", "dot", "mul", "norm", "sin", "sub", "sum"]
