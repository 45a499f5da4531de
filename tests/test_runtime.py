"""triton_kernels/runtime.py: CPU launches leave Triton as they found it."""

import os
import subprocess
import sys

import torch
import triton.language as tl

import torchext

# In a fresh process: run reductions on CPU tensors through the interpreter, then compile a
# kernel that calls `tl.sum` for sm_90, as the first CUDA launch after CPU work would.
_CPU_THEN_CUDA_COMPILE = """
import torch, triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import torchext

torchext.sum(torch.randn(5, 7), dim=1)
torchext.norm(torch.randn(9))

@triton.jit
def row_sum_kernel(x_ptr, out_ptr, BLOCK: tl.constexpr):
    offsets = tl.arange(0, BLOCK)
    tl.store(out_ptr, tl.sum(tl.load(x_ptr + offsets), axis=0))

source = ASTSource(row_sum_kernel, {"x_ptr": "*fp32", "out_ptr": "*fp32", "BLOCK": "constexpr"},
                   {"BLOCK": 128})
compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32))
print("ld.global" in compiled.asm["ptx"])
"""


def test_cpu_launches_restore_triton_language():
    descriptor = getattr(tl.core, "tensor_descriptor_base", None)  # absent in older tritons
    patched = tuple(o for o in (tl, tl.core, tl.math, tl.core.tensor, descriptor) if o is not None)
    before = [dict(vars(obj)) for obj in patched]
    x = torch.randn(6, 5, requires_grad=True)
    torchext.sum(torchext.mul(torchext.sin(x), x), dim=0).sum().backward()
    torchext.least_squares(torch.randn(4, 3), torch.randn(3), torch.randn(4))
    for obj, saved in zip(patched, before, strict=True):
        changed = [k for k, v in vars(obj).items() if k in saved and v is not saved[k]]
        assert not changed, f"{obj} left patched: {changed[:5]}"
        if isinstance(obj, type):  # patched methods such as tensor.__repr__ are removed
            assert vars(obj).keys() == saved.keys(), obj


def test_cuda_compile_after_cpu_launches_in_the_same_process(tmp_path):
    script = tmp_path / "cpu_then_cuda_compile.py"  # @triton.jit needs a source file
    script.write_text(_CPU_THEN_CUDA_COMPILE)
    env = {**os.environ, "TRITON_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-1] == "True"
