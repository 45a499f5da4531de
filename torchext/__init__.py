"""torchext: the autograd lesson's operators as Triton kernels, drop-in for their torch twins."""

from torchext.dot import dot
from torchext.least_squares import least_squares
from torchext.mul import mul
from torchext.mv import mv
from torchext.norm import norm
from torchext.patch import patch
from torchext.sin import cos, sin
from torchext.sub import sub
from torchext.sum import sum

__all__ = ["cos", "dot", "least_squares", "mul", "mv", "norm", "patch", "sin", "sub", "sum"]
