import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# Float comparisons between two computations of one quantity (another batching, order, kernel, member against solo)
# are bounded in roundings of the compared tensor's scale, from an error model written beside each bound: a sum of n
# terms in another order differs by at most n roundings of the sum of their magnitudes, which a second moment or a
# probability bounds by its largest entry. A bound never comes from what passed on one CPU
# (scripts/shake_numerics.py runs the fast tier under every float path a machine offers).
EPS32 = torch.finfo(torch.float32).eps   # one float32 rounding, relative: 1.19e-7
EPS64 = torch.finfo(torch.float64).eps


def scaled_error(got, want, eps=EPS32, scale=None):
    """max|got - want| in roundings (eps) of the compared tensor's scale: want's largest magnitude, or `scale`."""
    got, want = torch.as_tensor(got).double(), torch.as_tensor(want).double()
    scale = want.abs().max().item() if scale is None else scale
    if scale == 0:   # nothing to scale by: equal or infinitely far
        return 0.0 if torch.equal(got, want) else float('inf')
    return (got - want).abs().max().item() / (eps * scale)
