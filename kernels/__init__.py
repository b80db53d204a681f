"""Triton and CPU kernels of dit-sparse (plain tensors in, tensors out; no diffusers)."""
