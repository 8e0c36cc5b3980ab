"""The common descent direction of several objectives (MGDA): the negative of the
minimum-norm point of the convex hull of their gradients, solved exactly.

For gradients g_1..g_n with Gram matrix G, minimise w^T G w over the simplex. The optimum
lies in the relative interior of one face; on a face S it solves the equality-constrained
problem G_S w = mu 1, sum(w) = 1. Every face is tried (n is 2 or 3 here) and the best
feasible point kept, so the answer is exact up to floating point, also for nearly
parallel gradients where G is singular.
"""
from itertools import combinations

import torch


def min_norm_weights(gram: torch.Tensor) -> torch.Tensor:
    gram = gram.double().cpu()  # n x n with n <= 3: solved on the CPU wherever the gradients live
    n = gram.shape[0]
    best, best_value = None, float("inf")
    for size in range(1, n + 1):
        for face in combinations(range(n), size):
            idx = list(face)
            kkt = torch.zeros(size + 1, size + 1, dtype=torch.float64)
            kkt[:size, :size] = gram[idx][:, idx]
            kkt[:size, size] = -1.0
            kkt[size, :size] = 1.0
            rhs = torch.zeros(size + 1, dtype=torch.float64)
            rhs[size] = 1.0
            solution = torch.linalg.lstsq(kkt, rhs[:, None]).solution[:, 0]
            w_face = solution[:size]
            if (w_face < -1e-12).any() or not torch.isfinite(w_face).all():
                continue
            w = torch.zeros(n, dtype=torch.float64)
            w[idx] = w_face.clamp(min=0)
            w = w / w.sum()
            value = float(w @ gram @ w)
            if value < best_value - 1e-15:
                best, best_value = w, value
    return best


def common_descent_direction(grads: list, normalize: bool = False) -> tuple:
    """(d, weights) for flat gradients g_i: d = -sum_i w_i g_i with w the min-norm weights,
    so that g_i . d <= -||d||^2 for every i (a step along d decreases every objective).

    normalize: the hull of the unit vectors g_i / ||g_i|| instead (as MGDA-UB and NGDiff do),
    so that an objective with a small gradient does not become the min-norm point by itself
    and stop every step. An objective whose gradient is zero is stationary already: it is left
    out (weight 0), since no d can decrease it to first order (all of them zero: d = 0, every
    weight 0). "Zero" is below 1e-6 of the largest norm: the KL term's gradient at the
    reference measured 2e-8 of the retain term's on tiny-random, float32 rounding that
    normalising would turn into a full vote."""
    flat = torch.stack([g.double() for g in grads])
    moving = torch.ones(len(grads), dtype=torch.bool, device=flat.device)
    if normalize:
        norms = flat.norm(dim=1)
        moving = norms > 1e-6 * norms.max()
        flat = flat / norms.clamp(min=torch.finfo(torch.float64).tiny)[:, None]
    weights = torch.zeros(len(grads), dtype=torch.float64, device=flat.device)
    if moving.any():
        weights[moving] = min_norm_weights(flat[moving] @ flat[moving].T).to(flat.device)
    return -(weights[:, None] * flat).sum(0), weights
