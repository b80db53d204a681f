"""The CPU path: gathered groups on PyTorch's fused SDPA kernel."""
