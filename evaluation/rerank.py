"""k-reciprocal re-ranking (Zhong et al., CVPR 2017), the extra row re-ID papers report.

Given the (Q+G) x (Q+G) distance matrix of queries and gallery together:

1. each row of distances is divided by its maximum; `initial_rank[i]` orders
   all images by distance to i (i itself first);
2. R(i, k1), the k-reciprocal neighbours of i: those among its k1+1 nearest
   whose own k1+1 nearest include i; R is expanded by the k-reciprocal set
   R(c, round(k1/2)) of each member c when more than 2/3 of that set already
   lies in R(i, k1);
3. V[i, j] = exp(-d(i, j)) over the expanded set, normalised to sum to 1 (0
   elsewhere); with k2 > 1, V[i] is replaced by the mean of V over i's k2
   nearest (local query expansion);
4. Jaccard distance d_J(q, g) = 1 - sum_j min(V[q,j], V[g,j]) / sum_j max(V[q,j], V[g,j]);
5. final = (1 - lambda) * d_J + lambda * d (the normalised original distance).

Only the query rows of the result are computed (Q x G), with the sums in step 4
over V's non-zero columns of each query.
"""

from __future__ import annotations

import numpy as np


def _k_reciprocal(initial_rank: np.ndarray, i: int, k: int) -> np.ndarray:
    forward = initial_rank[i, :k + 1]
    backward = initial_rank[forward, :k + 1]
    return forward[(backward == i).any(axis=1)]


def re_rank(dist_qg: np.ndarray, dist_qq: np.ndarray, dist_gg: np.ndarray,
            k1: int = 20, k2: int = 6, lambda_value: float = 0.3) -> np.ndarray:
    """(Q, G) re-ranked distances (lower = more alike) from query-gallery, query-query and gallery-gallery distances."""
    q = dist_qg.shape[0]
    dist = np.block([[dist_qq, dist_qg], [dist_qg.T, dist_gg]]).astype(np.float64)
    dist = dist / np.maximum(dist.max(axis=1, keepdims=True), 1e-12)  # each row by its largest distance
    n = len(dist)
    initial_rank = np.argsort(dist, axis=1, kind="stable")
    v = np.zeros((n, n))
    half = int(np.around(k1 / 2))
    for i in range(n):
        reciprocal = _k_reciprocal(initial_rank, i, k1)
        expanded = reciprocal
        for candidate in reciprocal:
            theirs = _k_reciprocal(initial_rank, candidate, half)
            if len(np.intersect1d(theirs, reciprocal)) > 2 / 3 * len(theirs):
                expanded = np.append(expanded, theirs)
        expanded = np.unique(expanded)
        weight = np.exp(-dist[i, expanded])
        v[i, expanded] = weight / weight.sum()
    if k2 > 1:
        v = np.stack([v[initial_rank[i, :k2]].mean(axis=0) for i in range(n)])
    jaccard = np.zeros((q, n - q))
    for i in range(q):
        cols = np.flatnonzero(v[i])
        shared = np.minimum(v[i, cols][None, :], v[q:, cols]).sum(axis=1)
        jaccard[i] = 1 - shared / (2 - shared)  # sum of max = |V_q| + |V_g| - sum of min = 2 - sum of min
    return (1 - lambda_value) * jaccard + lambda_value * dist[:q, q:]
