"""CPU kernel time of block-sparse attention with and without a far field (one pooled key per
dropped block) at 16 x 32 x 32 tokens, 12 heads, fp32, fastest of 3 calls:

    python scripts/block_far_cost.py
"""
import time, torch, dit_sparse as ds
torch.manual_seed(0)
layout = ds.TokenLayout(grid=(16, 32, 32), text_len=0)
for hd in (64, 128):
    q, k, v = (torch.randn(1, layout.seq_len, 12, hd) for _ in range(3))
    for spec in ["block-sparse:block=4x8x8,topk=0.1", "block-sparse:block=4x8x8,topk=0.1,far=4x8x8",
                 "block-sparse:block=4x8x8,topk=0.25", "block-sparse:block=4x8x8,topk=0.25,far=4x8x8"]:
        p = ds.parse_pattern(spec)
        ds.sparse_attention(q, k, v, p, layout, backend="cpu")
        best = 1e9
        for _ in range(3):
            t = time.perf_counter(); ds.sparse_attention(q, k, v, p, layout, backend="cpu"); best = min(best, time.perf_counter() - t)
        print(hd, spec, f"{best*1000:.0f} ms", flush=True)
