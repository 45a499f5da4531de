"""Triton kernels and their launchers. No autograd here: `torchext` wraps these in Functions."""
