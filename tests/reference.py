"""Naive float64 NumPy oracles, written from the papers' formulas.

Nothing here imports dmljax or jax: every oracle is a plain Python loop over
float64 values (PML-style), so a test compares the kernel against an
independent computation, never against itself.

Shape letters: B batch, D embedding dim, P classes x K images per class,
T tuples = B (K - 1) num_negatives, N pairs (N-pair loss).

Sources: Wu et al. 2017, "Sampling Matters in Deep Embedding Learning"
(Sec. 3 losses, Sec. 4 q(d), distance weighted sampling, margin loss and the
beta gradient); Duan et al. 2019, DE-DSP, eq. (9) (N-pair loss).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import scipy.special

# ----------------------------------------------------------------------------
# Data.
# ----------------------------------------------------------------------------


def unit_rows(x: np.ndarray) -> np.ndarray:
  """Rows of x scaled to unit Euclidean norm."""
  x = np.asarray(x, np.float64)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def pk_batch(
  seed: int,
  num_classes: int,
  images_per_class: int,
  dim: int,
  *,
  spread: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
  """A shuffled P x K batch: float32 unit-norm embeddings, int32 labels.

  Class ids are random distinct non-negative values (not 0..P-1) and the batch
  is permuted, so classes are neither contiguous nor in label order. With
  spread < 1 each class clusters around a random centre.
  """
  rng = np.random.default_rng(seed)
  ids = rng.choice(1000, size=num_classes, replace=False)
  labels = np.repeat(ids, images_per_class)
  centres = unit_rows(rng.normal(size=(num_classes, dim)))
  noise = unit_rows(rng.normal(size=(len(labels), dim)))
  x = np.repeat(centres, images_per_class, axis=0) * (1 - spread)
  x = unit_rows(x + spread * noise)
  perm = rng.permutation(len(labels))
  return x[perm].astype(np.float32), labels[perm].astype(np.int32)


# ----------------------------------------------------------------------------
# Distances (Wu et al. Sec. 3: D_ij = ||f(x_i) - f(x_j)||).
# ----------------------------------------------------------------------------


def pairwise_distances(x, y=None, *, squared=False) -> np.ndarray:
  x = np.asarray(x, np.float64)
  y = x if y is None else np.asarray(y, np.float64)
  out = np.zeros((len(x), len(y)))
  for i in range(len(x)):
    for j in range(len(y)):
      s = 0.0
      for a, b in zip(x[i], y[j], strict=True):
        s += (a - b) ** 2
      out[i, j] = s if squared else math.sqrt(s)
  return out


def cosine_similarities(x, y=None) -> np.ndarray:
  x = np.asarray(x, np.float64)
  y = x if y is None else np.asarray(y, np.float64)
  out = np.zeros((len(x), len(y)))
  for i in range(len(x)):
    for j in range(len(y)):
      nx = math.sqrt(sum(v * v for v in x[i]))
      ny = math.sqrt(sum(v * v for v in y[j]))
      out[i, j] = sum(a * b for a, b in zip(x[i], y[j], strict=True)) / (
        nx * ny
      )
  return out


def weighted_distance_gradient(x, weights) -> np.ndarray:
  """d/dx of sum_ij weights[i, j] * D_ij (pairs with D_ij = 0 contribute 0).

  dD_ij/dx_i = (x_i - x_j) / D_ij and dD_ij/dx_j = -(x_i - x_j) / D_ij.
  """
  x = np.asarray(x, np.float64)
  grad = np.zeros_like(x)
  for i in range(len(x)):
    for j in range(len(x)):
      diff = x[i] - x[j]
      d = math.sqrt(float(diff @ diff))
      if d == 0.0 or weights[i, j] == 0.0:
        continue
      grad[i] += weights[i, j] * diff / d
      grad[j] -= weights[i, j] * diff / d
  return grad


# ----------------------------------------------------------------------------
# Labels.
# ----------------------------------------------------------------------------


def same_label_mask(labels, other_labels=None) -> np.ndarray:
  other = labels if other_labels is None else other_labels
  out = np.zeros((len(labels), len(other)), bool)
  for i in range(len(labels)):
    for j in range(len(other)):
      out[i, j] = labels[i] == other[j]
  return out


def positive_mask(labels) -> np.ndarray:
  out = np.zeros((len(labels), len(labels)), bool)
  for i in range(len(labels)):
    for j in range(len(labels)):
      out[i, j] = labels[i] == labels[j] and i != j
  return out


def negative_mask(labels) -> np.ndarray:
  out = np.zeros((len(labels), len(labels)), bool)
  for i in range(len(labels)):
    for j in range(len(labels)):
      out[i, j] = labels[i] != labels[j]
  return out


def class_groups(labels) -> np.ndarray:
  """[P, K]: rows ordered by label value, each row in batch order."""
  rows = []
  for c in sorted(set(int(v) for v in labels)):
    rows.append([i for i in range(len(labels)) if labels[i] == c])
  return np.array(rows, np.int64)


def positive_pairs(labels) -> list[tuple[int, int]]:
  """(a, p), a != p, same class; anchors then positives in batch order."""
  pairs = []
  for a in range(len(labels)):
    for p in range(len(labels)):
      if p != a and labels[p] == labels[a]:
        pairs.append((a, p))
  return pairs


def positive_slots(
  labels, images_per_class=None
) -> list[tuple[int, int, bool]]:
  """The K - 1 positive slots of every anchor, in batch order: (a, p, valid).

  Only the first K images of a class (batch order) are anchors or positives;
  a slot without a positive (a class with fewer than K images, or an image
  past its class's first K) is (a, a, False). With an exact P x K batch this
  is positive_pairs with every slot valid.
  """
  labels = [int(v) for v in labels]
  if images_per_class is None:
    images_per_class = max(labels.count(v) for v in labels)
  k = images_per_class
  members = {}
  for i, v in enumerate(labels):
    members.setdefault(v, []).append(i)
  slots = []
  for a, v in enumerate(labels):
    first = members[v][:k]
    others = [p for p in first if p != a] if a in first else []
    for j in range(k - 1):
      slots.append((a, others[j], True) if j < len(others) else (a, a, False))
  return slots


def negatives_of(labels, a) -> list[int]:
  return [n for n in range(len(labels)) if labels[n] != labels[a]]


# ----------------------------------------------------------------------------
# Samplers.
# ----------------------------------------------------------------------------


class RefTriplets(NamedTuple):
  anchors: np.ndarray
  positives: np.ndarray
  negatives: np.ndarray
  mask: np.ndarray


def _triplets(rows) -> RefTriplets:
  a, p, n, m = zip(*rows, strict=True)
  return RefTriplets(
    np.array(a, np.int64),
    np.array(p, np.int64),
    np.array(n, np.int64),
    np.array(m, bool),
  )


def _by_distance(distances, a, candidates) -> list[int]:
  """Candidates sorted by D_an, ties to the lower index."""
  return sorted(candidates, key=lambda n: (float(distances[a, n]), n))


def hard_triplets(
  distances, labels, *, num_negatives, images_per_class=None
) -> RefTriplets:
  """Slot r: the anchor's r-th closest negative; none left -> masked."""
  rows = []
  for a, p, valid in positive_slots(labels, images_per_class):
    ranked = _by_distance(distances, a, negatives_of(labels, a))
    for r in range(num_negatives):
      if valid and r < len(ranked):
        rows.append((a, p, ranked[r], True))
      else:
        rows.append((a, p, a, False))
  return _triplets(rows)


def semihard_triplets(
  distances,
  labels,
  *,
  num_negatives,
  lower_bound=None,
  fallback="farthest",
  images_per_class=None,
) -> RefTriplets:
  """FaceNet semi-hard: r-th closest n with D_an > D_ap (or > lower_bound)."""
  rows = []
  for a, p, valid in positive_slots(labels, images_per_class):
    negatives = negatives_of(labels, a)
    bound = distances[a, p] if lower_bound is None else lower_bound
    candidates = [n for n in negatives if distances[a, n] > bound]
    ranked = _by_distance(distances, a, candidates)
    for r in range(num_negatives):
      if not valid:
        rows.append((a, p, a, False))
      elif r < len(ranked):
        rows.append((a, p, ranked[r], True))
      elif not negatives or fallback == "drop":
        rows.append((a, p, a, False))
      elif fallback == "farthest":
        far = max(negatives, key=lambda n: (float(distances[a, n]), -n))
        rows.append((a, p, far, True))
      elif fallback == "nearest":
        rows.append((a, p, _by_distance(distances, a, negatives)[0], True))
      else:
        raise ValueError(fallback)
  return _triplets(rows)


def semihard_fallback_count(
  distances, labels, *, num_negatives, lower_bound=None
) -> int:
  """How many (a, p, r) slots have fewer than r + 1 semi-hard candidates."""
  count = 0
  for a, p in positive_pairs(labels):
    bound = distances[a, p] if lower_bound is None else lower_bound
    candidates = [n for n in negatives_of(labels, a) if distances[a, n] > bound]
    count += max(num_negatives - len(candidates), 0)
  return count


def log_q_unnormalised(d: float, dim: int) -> float:
  """log of d^(dim-2) (1 - d^2/4)^((dim-3)/2)  (Wu et al. Sec. 4)."""
  return (dim - 2) * math.log(d) + 0.5 * (dim - 3) * math.log1p(-0.25 * d * d)


def distance_weighted_usable(
  distances, labels, *, nonzero_loss_cutoff=1.4
) -> np.ndarray:
  """Usable (a, n): different label and D_an < nonzero_loss_cutoff."""
  b = len(labels)
  out = np.zeros((b, b), bool)
  for a in range(b):
    for n in range(b):
      out[a, n] = (
        labels[n] != labels[a] and distances[a, n] < nonzero_loss_cutoff
      )
  return out


def distance_weighted_log_probabilities(
  distances, labels, *, dim, cutoff=0.5, nonzero_loss_cutoff=1.4
) -> np.ndarray:
  """log Pr(n | a) ∝ log min(lambda, q(D_an)^-1), per anchor row, float64.

  The clip min(lambda, q^-1) is realised by evaluating q at max(D_an, cutoff).
  Each row is normalised over its usable entries from log weights with that
  row's own maximum; unusable entries (and rows with none) are -inf.
  """
  distances = np.asarray(distances, np.float64)
  usable = distance_weighted_usable(
    distances, labels, nonzero_loss_cutoff=nonzero_loss_cutoff
  )
  b = len(labels)
  out = np.full((b, b), -np.inf)
  for a in range(b):
    cols = [n for n in range(b) if usable[a, n]]
    if not cols:
      continue
    logw = {
      n: -log_q_unnormalised(max(float(distances[a, n]), cutoff), dim)
      for n in cols
    }
    top = max(logw.values())
    total = sum(math.exp(v - top) for v in logw.values())
    for n in cols:
      out[a, n] = logw[n] - top - math.log(total)
  return out


def global_max_probabilities_float32(
  distances, labels, *, dim, cutoff=0.5, nonzero_loss_cutoff=1.4
) -> np.ndarray:
  """The authors' MXNet (and PML's) normalisation, in float32, for contrast.

  log weights over the whole clipped matrix, minus ONE global maximum, then
  exp, mask (negatives below the non-zero-loss cutoff) and row sums. A row
  whose weights all underflow sums to 0 and gives NaN: that anchor is lost.
  """
  d = np.maximum(np.asarray(distances, np.float32), np.float32(cutoff))
  logw = (np.float32(2.0 - dim) * np.log(d)) - np.float32(
    (dim - 3) / 2.0
  ) * np.log(np.float32(1.0) - np.float32(0.25) * d * d)
  weights = np.exp(logw - logw.max())
  usable = distance_weighted_usable(
    distances, labels, nonzero_loss_cutoff=nonzero_loss_cutoff
  )
  weights = weights * usable.astype(np.float32)
  with np.errstate(invalid="ignore", divide="ignore"):
    return weights / weights.sum(axis=1, keepdims=True)


def sphere_distance_log_density(d: float, dim: int) -> float:
  """log q(d), q normalised with the Euler beta function B(1/2, (dim-1)/2)."""
  return log_q_unnormalised(d, dim) - math.log(
    scipy.special.beta(0.5, 0.5 * (dim - 1))
  )


def sphere_distance_cdf(d, dim):
  """Closed form: Pr(D <= d) = I_{d^2/4}((dim-1)/2, (dim-1)/2).

  With t = <x, y>, (1 + t)/2 ~ Beta((dim-1)/2, (dim-1)/2) for independent
  uniform points on S^(dim-1), and D^2 = 2 - 2t.
  """
  a = 0.5 * (dim - 1)
  return scipy.special.betainc(a, a, np.asarray(d, np.float64) ** 2 / 4.0)


# ----------------------------------------------------------------------------
# Losses (unreduced terms, 0 where the triplet is masked).
# ----------------------------------------------------------------------------


def _hinge(v: float) -> float:
  return v if v > 0.0 else 0.0


def contrastive_terms(distances, triplets, *, margin):
  """Wu et al. Sec. 3: y D^2 + (1 - y) [alpha - D]_+^2, one pos + one neg."""
  pos, neg = [], []
  for a, p, n, m in zip(*triplets, strict=True):
    pos.append(distances[a, p] ** 2 if m else 0.0)
    neg.append(_hinge(margin - distances[a, n]) ** 2 if m else 0.0)
  return np.array(pos), np.array(neg)


def triplet_terms(distances, triplets, *, margin, squared):
  """[D_ap^2 - D_an^2 + alpha]_+ (squared) or [D_ap - D_an + alpha]_+."""
  out = []
  for a, p, n, m in zip(*triplets, strict=True):
    dap, dan = distances[a, p], distances[a, n]
    if squared:
      v = _hinge(dap**2 - dan**2 + margin)
    else:
      v = _hinge(dap - dan + margin)
    out.append(v if m else 0.0)
  return np.array(out)


def margin_terms(distances, triplets, beta, *, margin):
  """(alpha + y (D - beta))_+ with y = +1 (a, p) and y = -1 (a, n)."""
  beta = np.broadcast_to(np.asarray(beta, np.float64), (len(triplets.mask),))
  pos, neg = [], []
  for t, (a, p, n, m) in enumerate(zip(*triplets, strict=True)):
    pos.append(_hinge(margin + (distances[a, p] - beta[t])) if m else 0.0)
    neg.append(_hinge(margin - (distances[a, n] - beta[t])) if m else 0.0)
  return np.array(pos), np.array(neg)


def margin_beta_gradients(distances, triplets, beta, *, margin):
  """Per-term d/d beta = -y 1{alpha > y (beta - D)}  (Wu et al. Sec. 4)."""
  beta = np.broadcast_to(np.asarray(beta, np.float64), (len(triplets.mask),))
  gpos, gneg = [], []
  for t, (a, p, n, m) in enumerate(zip(*triplets, strict=True)):
    y = 1.0
    gpos.append(-y * float(margin > y * (beta[t] - distances[a, p])) * m)
    y = -1.0
    gneg.append(-y * float(margin > y * (beta[t] - distances[a, n])) * m)
  return np.array(gpos), np.array(gneg)


def term_distance_weights(triplets, dterms, num_points) -> np.ndarray:
  """Scatter per-triplet dL/dD_ap, dL/dD_an into a [B, B] weight matrix."""
  w = np.zeros((num_points, num_points))
  rows = zip(*triplets, strict=True)
  for (a, p, n, m), (gap, gan) in zip(rows, dterms, strict=True):
    if m:
      w[a, p] += gap
      w[a, n] += gan
  return w


def contrastive_distance_derivatives(
  distances, triplets, *, margin, wpos, wneg
):
  """d(wpos pos + wneg neg)/d(D_ap, D_an) per triplet."""
  out = []
  for a, p, n, _ in zip(*triplets, strict=True):
    out.append(
      (wpos * 2 * distances[a, p], -wneg * 2 * _hinge(margin - distances[a, n]))
    )
  return out


def triplet_distance_derivatives(distances, triplets, *, margin, squared):
  out = []
  for a, p, n, _ in zip(*triplets, strict=True):
    dap, dan = distances[a, p], distances[a, n]
    if squared:
      active = dap**2 - dan**2 + margin > 0
      out.append((2 * dap * active, -2 * dan * active))
    else:
      active = dap - dan + margin > 0
      out.append((1.0 * active, -1.0 * active))
  return out


def margin_distance_derivatives(
  distances, triplets, beta, *, margin, wpos, wneg
):
  beta = np.broadcast_to(np.asarray(beta, np.float64), (len(triplets.mask),))
  out = []
  for t, (a, p, n, _) in enumerate(zip(*triplets, strict=True)):
    pos_active = margin + distances[a, p] - beta[t] > 0
    neg_active = margin - distances[a, n] + beta[t] > 0
    out.append((wpos * pos_active, -wneg * neg_active))
  return out


def npair_terms(similarities) -> np.ndarray:
  """DE-DSP eq. (9) per probe: log(1 + sum_{j != i} exp(s_ij - s_ii)).

  Evaluated exactly as written, in float64 (exp(s_ij - s_ii) as is).
  """
  s = np.asarray(similarities, np.float64)
  out = []
  for i in range(len(s)):
    total = 0.0
    for j in range(len(s)):
      if j != i:
        total += math.exp(s[i, j] - s[i, i])
    out.append(math.log(1.0 + total))
  return np.array(out)


def npair_similarity_gradient(similarities) -> np.ndarray:
  """d(sum_i term_i)/d s: softmax weights off the diagonal, minus on it."""
  s = np.asarray(similarities, np.float64)
  g = np.zeros_like(s)
  for i in range(len(s)):
    e = [math.exp(s[i, j] - s[i, i]) if j != i else 0.0 for j in range(len(s))]
    z = 1.0 + sum(e)
    for j in range(len(s)):
      if j != i:
        g[i, j] = e[j] / z
    g[i, i] = -sum(e) / z
  return g


# ----------------------------------------------------------------------------
# Reductions.
# ----------------------------------------------------------------------------


def masked_mean(terms, mask) -> float:
  total, count = 0.0, 0
  for v, m in zip(terms, mask, strict=True):
    if m:
      total += float(v)
      count += 1
  return total / max(count, 1)


def nonzero_mean(*terms, mask, extra=0.0) -> float:
  """(sum of masked terms + extra) / max(#masked non-zero terms, 1)."""
  total, count = float(extra), 0
  for term in terms:
    for v, m in zip(term, mask, strict=True):
      if m:
        total += float(v)
        count += int(v > 0)
  return total / max(count, 1)


def active_term_count(*terms, mask) -> int:
  return sum(
    int(m and v > 0) for term in terms for v, m in zip(term, mask, strict=True)
  )
