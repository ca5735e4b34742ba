"""Block-sparse SFA attention equals the dense masked attention (forward and gradients)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from eartalk.core.engine.attention import SFALayout, dense_mask
from eartalk.core.engine.backbone import Backbone


@pytest.mark.parametrize(
    ("frames", "window", "chunk", "sink"),
    [(9, 4, 0, True), (9, 4, 1, True), (7, 3, 4, True), (5, 8, 2, True), (9, 4, 3, False), (33, 16, 0, True)],
)
def test_sparse_equals_dense_masked(frames: int, window: int, chunk: int, sink: bool) -> None:
    torch.manual_seed(0)
    layout = SFALayout(sink_len=4, block_len=6, frames=frames, window=window, sink=sink, chunk=chunk)
    q, k, v = (torch.randn(2, 3, layout.length, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    dense = F.scaled_dot_product_attention(q, k, v, attn_mask=dense_mask(layout))
    sparse = layout.attend(q, k, v)
    torch.testing.assert_close(sparse, dense, rtol=1e-10, atol=1e-10)
    grad = torch.randn_like(dense)
    g_dense = torch.autograd.grad(dense, (q, k, v), grad)
    g_sparse = torch.autograd.grad(sparse, (q, k, v), grad)
    for a, b in zip(g_sparse, g_dense, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    scored, dense_pairs = layout.pairs()
    if frames > window:  # blocks outside the window exist: the sparse path scores fewer pairs
        assert scored < dense_pairs


def test_start_offset_does_not_change_the_rule() -> None:
    layout = SFALayout(sink_len=2, block_len=3, frames=6, window=2)
    assert torch.equal(dense_mask(layout, start=1), dense_mask(layout, start=40))


def test_backbone_sparse_forward_equals_dense() -> None:
    torch.manual_seed(0)
    bb = Backbone(token_dim=8, num_tokens=4, grid=2, num_slots=2, cond_dim=16, width=16, heads=2, depth=2,
                  identity_dim=8, window=3, period=8).double()
    for p in bb.parameters():  # adaLN-Zero starts as the identity: give the blocks non-zero gates
        torch.nn.init.normal_(p, std=0.2)
    bb.eval()
    ref, cond, prev = torch.randn(2, 4, 8).double(), torch.randn(2, 7, 2, 16).double(), torch.randn(2, 7, 4, 8).double()
    dense = bb(ref, cond, prev)
    bb.attention = "sparse"
    sparse = bb(ref, cond, prev)
    torch.testing.assert_close(sparse, dense, rtol=1e-9, atol=1e-9)
    assert dense.abs().mean() > 0.1
