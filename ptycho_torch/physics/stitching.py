"""Stitch object patches into the full object (SPEC 4.7), vectorised and streaming-friendly.

The canvas is in the scan's pixel frame: object[y, x] is the object at scan coordinate (x, y), the
frame of `objectGuess`. Each patch is placed at its absolute position (sub-pixel by a Fourier shift)
with weight w (|probe|^2 by default, or a central disk), accumulating sum(w * O) and sum(w); the
object is their ratio where sum(w) exceeds `threshold * max(sum(w))`. Partial accumulators over
disjoint sets of patches add up (`StitchAccumulator.add_partial`), so patches can stream in batches.

Streaming pieces (used by the Ray Data path, usable anywhere): `compact_subsets` splits a batch into
spatially compact subsets, `partial_canvas` stitches one subset onto its bounding box (float32
(3, h, w) = Re sum(w*O), Im sum(w*O), sum(w)), and `CanvasSum` adds partial canvases into the full
canvas in any order, checking that every pattern arrives exactly once.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ptycho_torch.physics.forward import place_patches


def stitch_weight(probe: torch.Tensor | np.ndarray, kind: str = "probe") -> torch.Tensor:
    """(N, N) float32 weight in the patch frame: normalised sum_p |P_p|^2, or a disk of radius N/4."""
    probe = torch.as_tensor(probe)
    N = probe.shape[-1]
    if kind == "probe":
        w = probe.reshape(-1, N, N).abs().square().sum(0).float()
        return w / w.max().clamp_min(1e-30)
    if kind == "mask":
        yy, xx = torch.meshgrid(torch.arange(N) - N / 2, torch.arange(N) - N / 2, indexing="ij")
        return ((yy**2 + xx**2) <= (N / 4) ** 2).float()
    raise ValueError(f"stitch weight must be 'probe' or 'mask', got {kind!r}")


class StitchAccumulator:
    """Running sums of w*O and w on an (H, W) canvas. `add` batches of patches, then `result`."""

    def __init__(self, canvas_hw: tuple[int, int], weight: torch.Tensor) -> None:
        self.canvas_hw = (int(canvas_hw[0]), int(canvas_hw[1]))
        self.weight = weight.float()
        self.obj_sum = torch.zeros(self.canvas_hw, dtype=torch.complex64)
        self.w_sum = torch.zeros(self.canvas_hw, dtype=torch.float32)
        self.count = 0

    def add(self, patches: torch.Tensor, positions: torch.Tensor) -> None:
        """patches (K, N, N) complex; positions (K, 2) (x, y) pixels."""
        if len(patches) == 0:
            return
        o, w = place_patches(patches[None].to(torch.complex64), torch.as_tensor(positions)[None].float(),
                             self.canvas_hw, self.weight.to(patches.device))
        self.obj_sum += o[0].cpu()
        self.w_sum += w[0].cpu()
        self.count += len(patches)

    def add_partial(self, y0: int, x0: int, obj_sum: torch.Tensor, w_sum: torch.Tensor, count: int) -> None:
        """Add the sums of a partial canvas (h, w) whose pixel (0, 0) is canvas pixel (y0, x0):
        obj_sum complex, w_sum real, over `count` patches (e.g. from another worker)."""
        h, w = obj_sum.shape[-2:]
        if y0 < 0 or x0 < 0 or y0 + h > self.canvas_hw[0] or x0 + w > self.canvas_hw[1]:
            raise ValueError(f"a {h}x{w} partial canvas at (y0={y0}, x0={x0}) does not fit the "
                             f"{self.canvas_hw[0]}x{self.canvas_hw[1]} canvas")
        self.obj_sum[y0:y0 + h, x0:x0 + w] += obj_sum
        self.w_sum[y0:y0 + h, x0:x0 + w] += w_sum
        self.count += count

    def result(self, threshold: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
        """(object (H, W) complex64, weight (H, W) float32); object is 0 where weight is too small."""
        w = self.w_sum
        valid = w > threshold * float(w.max()) if self.count else torch.zeros_like(w, dtype=torch.bool)
        obj = torch.where(valid, self.obj_sum / w.clamp_min(1e-30), torch.zeros_like(self.obj_sum))
        weight = torch.where(valid, w, torch.zeros_like(w))
        return obj.numpy().astype(np.complex64), weight.numpy().astype(np.float32)


def stitch(patches: torch.Tensor, positions: torch.Tensor, canvas_hw: tuple[int, int],
           weight: torch.Tensor, threshold: float = 1e-3, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Stitch all patches (M, N, N) at positions (M, 2) in chunks; returns (object, weight)."""
    acc = StitchAccumulator(canvas_hw, weight)
    for start in range(0, len(patches), chunk):
        acc.add(patches[start:start + chunk], positions[start:start + chunk])
    return acc.result(threshold)


def partial_canvas(patches: torch.Tensor, positions: np.ndarray, canvas_hw: tuple[int, int],
                   weight: torch.Tensor) -> tuple[int, int, np.ndarray]:
    """Stitch patches (B, N, N) complex at positions (B, 2) (x, y) pixels onto their bounding box.

    Returns (y0, x0, canvas (3, h, w) float32 = Re sum(w*O), Im sum(w*O), sum(w)) whose pixel (0, 0)
    is pixel (y0, x0) of the full (H, W) canvas. Positions are cast to float32 (as `stitch` does) and
    shifted by the integer box corner, so the sub-pixel shifts are exactly those of the full canvas.
    """
    N = patches.shape[-1]
    pos = torch.from_numpy(np.asarray(positions, dtype=np.float32))  # (B, 2)
    corner = torch.floor(pos).long() - N // 2  # (B, 2) top-left (x, y) of each patch
    x0, y0 = int(corner[:, 0].min()), int(corner[:, 1].min())
    x1, y1 = int(corner[:, 0].max()) + N, int(corner[:, 1].max()) + N
    H, W = canvas_hw
    if x0 < 0 or y0 < 0 or x1 > W or y1 > H:
        raise ValueError(f"patch positions fall outside the {H}x{W} canvas (box x {x0}..{x1}, y {y0}..{y1})")
    local = pos - torch.tensor([x0, y0], dtype=torch.float32)  # exact: an integer shift
    obj_sum, w_sum = place_patches(patches[None].to(torch.complex64), local[None], (y1 - y0, x1 - x0), weight)
    return y0, x0, torch.stack([obj_sum[0].real, obj_sum[0].imag, w_sum[0]]).numpy()


def compact_subsets(positions: np.ndarray, N: int, max_ratio: float = 1.0) -> list[np.ndarray]:
    """Split a batch into subsets whose patch bounding boxes hold at most `max_ratio` x (count x N^2)
    pixels, by recursive median cuts along the longer side; positions (B, 2) (x, y) pixels.

    Consecutive patterns of raster or spiral scans are close, so a batch is normally one subset;
    scattered positions (random scan order, a batch spanning two files) give several small partial
    canvases instead of one canvas-sized one (12 bytes per pixel vs 8 per patch pixel).
    """
    out: list[np.ndarray] = []
    stack = [np.arange(len(positions))]
    while stack:
        idx = stack.pop()
        p = np.floor(positions[idx])
        span = p.max(axis=0) - p.min(axis=0)  # (2,) x, y extent of the corners
        if len(idx) == 1 or (span[0] + N) * (span[1] + N) <= max_ratio * len(idx) * N * N:
            out.append(idx)
            continue
        axis = int(np.argmax(span))
        order = idx[np.argsort(p[:, axis], kind="stable")]
        half = len(order) // 2
        stack += [order[:half], order[half:]]
    return out


class CanvasSum:
    """The full (H, W) stitching sums, fed with partial canvases in any order.

    Tracks which global pattern indices arrived (one byte per pattern), so that a lost or repeated
    batch is an error, not a silently wrong object; `first_start` / `last_end` collect the batch
    timestamps (epoch seconds) that producers report.
    """

    def __init__(self, canvas_hw: tuple[int, int], weight: torch.Tensor, n_patterns: int) -> None:
        self.acc = StitchAccumulator(canvas_hw, weight)
        self.seen = np.zeros(n_patterns, dtype=bool)
        self.first_start, self.last_end = math.inf, -math.inf

    def add(self, y0: int, x0: int, canvas: np.ndarray, index: np.ndarray) -> int:
        """Add one partial canvas (3, h, w) of the patterns `index`; returns their number."""
        index = np.asarray(index, dtype=np.int64)
        if self.seen[index].any():
            raise RuntimeError(f"patterns {index[self.seen[index]][:5].tolist()} arrived twice; a "
                               "retried task produced duplicate output")
        self.seen[index] = True
        c = torch.from_numpy(np.array(canvas, dtype=np.float32))  # a writable copy of a shared buffer
        self.acc.add_partial(y0, x0, torch.complex(c[0], c[1]), c[2], len(index))
        return len(index)

    def add_batch(self, batch: dict[str, np.ndarray]) -> int:
        """Add every row of a batch with columns y0, x0, canvas, index (ragged: object arrays) and
        optionally t0, t1; returns the number of patterns added."""
        if "t0" in batch and len(batch["t0"]):
            self.first_start = min(self.first_start, float(np.min(batch["t0"])))
            self.last_end = max(self.last_end, float(np.max(batch["t1"])))
        return sum(self.add(int(batch["y0"][i]), int(batch["x0"][i]), batch["canvas"][i], batch["index"][i])
                   for i in range(len(batch["y0"])))

    @property
    def compute_seconds(self) -> float:
        """From the first batch's start to the last batch's end (0 if unknown)."""
        return max(self.last_end - self.first_start, 0.0) if math.isfinite(self.first_start) else 0.0

    def result(self, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        missing = np.flatnonzero(~self.seen)
        if missing.size:
            raise RuntimeError(f"{missing.size} patterns never came back (first {missing[:5].tolist()})")
        return self.acc.result(threshold)


def _leading_eigenvector(z: torch.Tensor, i_idx: torch.Tensor, j_idx: torch.Tensor, M: int) -> torch.Tensor:
    """Unit-modulus phases (M,) from the leading eigenvector of the Hermitian (M, M) matrix with
    Z[j, i] = z_ij, Z[i, j] = conj(z_ij) (scipy eigsh, sparse)."""
    import numpy as np
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import eigsh

    zn = z.numpy().astype(np.complex128)
    rows = np.concatenate([j_idx.numpy(), i_idx.numpy()])
    cols = np.concatenate([i_idx.numpy(), j_idx.numpy()])
    Z = coo_matrix((np.concatenate([zn, zn.conj()]), (rows, cols)), shape=(M, M)).tocsr()
    try:
        _, vec = eigsh(Z, k=1, which="LA", maxiter=5000, tol=1e-6)
        v = torch.from_numpy(vec[:, 0].astype(np.complex64))
    except Exception:  # noqa: BLE001 - no convergence: fall back to the network's own phases
        v = torch.ones(M, dtype=torch.complex64)
    return torch.where(v.abs() > 0, v / v.abs().clamp_min(1e-30), torch.ones_like(v))


def align_phases(patches: torch.Tensor, positions: torch.Tensor, weight: torch.Tensor,
                 iterations: int = 2000, chunk: int = 256, neighbours: int = 8) -> tuple[torch.Tensor, dict[str, float]]:
    """Give every patch the global phase that makes it agree with its overlapping neighbours.

    A patch's global phase is invisible to the diffraction data, so a network leaves it arbitrary;
    stitching patches whose phases disagree averages the object's slowly varying phase away. For
    each patch and each of its `neighbours` nearest closer than N/2, z_ij = sum_q w_i w_j O_i conj(O_j) over the
    overlap (O_j translated into i's frame, weights w = the stitching weight); the phases u (M,)
    of unit modulus that maximise sum Re(conj(u_i) z_ij u_j) are found by the projected power
    method (angular synchronisation), started from u = 1.

    patches (M, N, N) complex; positions (M, 2) (x, y) px; weight (N, N). Returns the rotated
    patches u_i O_i (M, N, N) complex64 and a record (pairs, iterations run, final change).
    """
    from scipy.spatial import cKDTree

    from ptycho_torch.physics.forward import fourier_shift

    M, N, _ = patches.shape
    pts = positions.numpy()
    k = min(neighbours + 1, M)
    dist, nearest = cKDTree(pts).query(pts, k=k)  # (M, k), column 0 is the patch itself
    dist, nearest = dist.reshape(M, k)[:, 1:], nearest.reshape(M, k)[:, 1:]
    first = np.repeat(np.arange(M), k - 1)
    keep = dist.ravel() < N / 2
    pairs = np.stack([first[keep], nearest.ravel()[keep]], 1)
    pairs = np.unique(np.sort(pairs, axis=1), axis=0)  # (K, 2), i < j, each pair once
    if len(pairs) == 0:
        return patches, {"pairs": 0, "iterations": 0, "change": 0.0}
    i_idx, j_idx = torch.from_numpy(pairs[:, 0]), torch.from_numpy(pairs[:, 1])
    w = weight.float()
    pad = N // 2
    z = torch.empty(len(pairs), dtype=torch.complex64)
    for s in range(0, len(pairs), chunk):
        i, j = i_idx[s:s + chunk], j_idx[s:s + chunk]
        shift = (positions[j] - positions[i]).float()  # patch j seen from i's frame moves by -(p_i - p_j)
        moved = torch.nn.functional.pad((patches[j] * w).to(torch.complex64), (pad, pad, pad, pad))
        moved = fourier_shift(moved, shift)[..., pad:pad + N, pad:pad + N]  # (k, N, N) in i's frame
        z[s:s + chunk] = (patches[i] * w * moved.conj()).sum((-2, -1))
    # Z[j, i] = z_ij (Hermitian): node j gathers z_ij u_i from i, node i gathers conj(z_ij) u_j from j
    u = _leading_eigenvector(z, i_idx, j_idx, M)  # spectral start: no vortices for the power method to get stuck in
    change, done = 0.0, 0
    while done < iterations:
        done += 1
        acc = torch.zeros(M, dtype=torch.complex64)
        acc.index_add_(0, j_idx, z * u[i_idx])
        acc.index_add_(0, i_idx, z.conj() * u[j_idx])
        new = torch.where(acc.abs() > 0, acc / acc.abs().clamp_min(1e-30), u)
        change = float((new - u).abs().max())
        u = new
        if change < 1e-5:
            break
    # fix the free global phase: the mean rotation is zero, so aligned patches stay near the network's
    u = u * (u.sum().conj() / u.sum().abs().clamp_min(1e-30))
    return patches * u[:, None, None], {"pairs": float(len(pairs)), "iterations": float(done),
                                               "change": change}
