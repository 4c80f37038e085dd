"""Instance matching: sparse overlaps, optimal matching at IoU thresholds, detection/panoptic scores.

Memory is O(pixels + overlapping pairs): the overlaps come from one pass over the label runs of the raveled
images, never from one mask per instance or a dense (n_gt x n_pred) matrix.

Matching rule (stardist.matching and cellpose.metrics): a pair may match when IoU >= t; the matching maximises
the number of matches and, among those, the summed IoU of the matches. For t >= 0.5 every object has at most one
partner with IoU > 0.5 (and at exactly 0.5 the candidate graph is a union of stars), so the matching is read off
directly; for t < 0.5 each connected group of candidate pairs is solved with scipy.optimize.linear_sum_assignment.
(stardist's tie-break also counts the IoU of assigned pairs below t, so below 0.5 its matched pairs, never its
counts, can differ from ours when two maximum matchings tie.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Overlaps:
    """Sparse overlap table of two label images.

    gt_ids/pred_ids: the object labels (sorted, background 0 excluded); gt_area/pred_area: their pixel counts.
    pair_gt/pair_pred: indices into gt_ids/pred_ids of every overlapping pair; inter: its intersection; iou: its IoU.
    """

    gt_ids: np.ndarray
    pred_ids: np.ndarray
    gt_area: np.ndarray
    pred_area: np.ndarray
    pair_gt: np.ndarray
    pair_pred: np.ndarray
    inter: np.ndarray
    iou: np.ndarray

    @property
    def n_true(self) -> int:
        return len(self.gt_ids)

    @property
    def n_pred(self) -> int:
        return len(self.pred_ids)


@dataclass(frozen=True)
class MatchCounts:
    """The matching at one IoU threshold. matched: (k, 2) array of (gt label, pred label); matched_iou: their IoU."""

    thresh: float
    tp: int
    fp: int
    fn: int
    sum_iou: float
    n_true: int
    n_pred: int
    matched: np.ndarray
    matched_iou: np.ndarray

    def scores(self) -> dict[str, float]:
        return instance_scores(self.tp, self.fp, self.fn, self.sum_iou)


def _as_labels(a: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == bool:
        a = a.astype(np.uint8)
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must hold integer labels, got dtype {a.dtype}")
    if a.size and np.issubdtype(a.dtype, np.signedinteger) and a.min() < 0:
        raise ValueError(f"{name} must hold non-negative labels (0 = background)")
    return np.ascontiguousarray(a).reshape(-1)


def _compact(values: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Object ids (0 excluded), their summed weights, and for each value its object index (-1 for 0)."""
    vmax = int(values.max()) if len(values) else 0
    if vmax <= max(1 << 20, 4 * len(values)):  # a lookup table beats sorting
        values = values.astype(np.intp, copy=False)
        total = np.bincount(values, weights=weights, minlength=vmax + 1)
        present = np.bincount(values, minlength=vmax + 1) > 0
        present[0] = False
        ids = np.flatnonzero(present)
        lut = np.full(vmax + 1, -1, dtype=np.int64)
        lut[ids] = np.arange(len(ids))
        return ids, total[ids], lut[values]
    ids, inv = np.unique(values, return_inverse=True)
    area = np.bincount(inv, weights=weights, minlength=len(ids))
    if len(ids) and ids[0] == 0:
        return ids[1:], area[1:], inv.astype(np.int64) - 1
    return ids, area, inv.astype(np.int64)


def overlaps(pred: np.ndarray, gt: np.ndarray) -> Overlaps:
    """Overlap table of a predicted and a reference label image (same shape, any dimension)."""
    p = _as_labels(pred, "pred")
    g = _as_labels(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred and gt must have the same shape, got pred {np.shape(pred)} and gt {np.shape(gt)}")
    n = g.size
    if n == 0:
        e = np.zeros(0, np.int64)
        f = np.zeros(0, np.float64)
        return Overlaps(e, e, f, f, e, e, f, f)
    # runs of constant (gt, pred) along the raveled images: far fewer than pixels for label images
    change = np.empty(n, dtype=bool)
    change[0] = True
    np.not_equal(g[1:], g[:-1], out=change[1:])
    change[1:] |= p[1:] != p[:-1]
    starts = np.flatnonzero(change)
    lengths = np.diff(starts, append=n).astype(np.float64)
    rg = g[starts]
    rp = p[starts]
    del change, starts
    gt_ids, gt_area, gi = _compact(rg, lengths)
    pred_ids, pred_area, pi = _compact(rp, lengths)
    both = (gi >= 0) & (pi >= 0)
    n_pred = max(len(pred_ids), 1)
    key = gi[both] * n_pred + pi[both]
    ukey, kinv = np.unique(key, return_inverse=True)
    inter = np.bincount(kinv, weights=lengths[both], minlength=len(ukey))
    pair_gt = ukey // n_pred
    pair_pred = ukey % n_pred
    # same float64 division of exact integers as stardist: identical IoU values
    iou = inter / (gt_area[pair_gt] + pred_area[pair_pred] - inter)
    return Overlaps(
        gt_ids.astype(np.int64), pred_ids.astype(np.int64), gt_area, pred_area, pair_gt, pair_pred, inter, iou
    )


def _match_unique(ov: Overlaps, order: np.ndarray, cut: int) -> np.ndarray:
    """Edges (indices into the pair arrays) of the maximum matching among pairs with IoU >= t >= 0.5.

    order sorts pairs by decreasing IoU, cut = number of pairs with IoU >= t. Above 0.5 the candidates already
    form a matching; ties at exactly 0.5 only form stars (one object split into two exact halves), where any
    one edge is a maximum matching with the same summed IoU.
    """
    e = order[:cut]
    if len(e) == 0:
        return e
    _, first = np.unique(ov.pair_gt[e], return_index=True)
    e = e[np.sort(first)]
    _, first = np.unique(ov.pair_pred[e], return_index=True)
    return e[np.sort(first)]


def _match_general(ov: Overlaps, t: float) -> np.ndarray:
    """Maximum matching among pairs with IoU >= t; among those, the one with the largest summed IoU.

    Each connected group of candidate pairs is solved with linear_sum_assignment on the cost
    ``-1 - iou / (2 k)`` (k = the group's smaller side, so the IoU term never outweighs one match).
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    cand = np.flatnonzero(ov.iou >= t)
    if len(cand) == 0:
        return np.zeros(0, np.int64)
    ng = ov.n_true
    pg, pp = ov.pair_gt[cand], ov.pair_pred[cand]
    # candidate graph: gt nodes 0..ng-1, pred nodes ng..ng+n_pred-1
    n_nodes = ng + ov.n_pred
    graph = coo_matrix((np.ones(len(cand), np.int8), (pg, pp + ng)), shape=(n_nodes, n_nodes))
    _, comp = connected_components(graph, directed=False)
    pc = comp[pg]
    sizes = np.bincount(pc)
    single = sizes[pc] == 1  # a group of one pair: it is matched
    out = [cand[single]]
    multi = np.flatnonzero(~single)
    if len(multi):
        multi = multi[np.argsort(pc[multi], kind="stable")]
        bounds = np.flatnonzero(np.diff(pc[multi])) + 1
        for grp in np.split(multi, bounds):
            rows, r_inv = np.unique(pg[grp], return_inverse=True)
            cols, c_inv = np.unique(pp[grp], return_inverse=True)
            k = min(len(rows), len(cols))
            costs = np.zeros((len(rows), len(cols)))
            costs[r_inv, c_inv] = -1.0 - ov.iou[cand[grp]] / (2 * k)
            edge = np.full(costs.shape, -1, dtype=np.int64)
            edge[r_inv, c_inv] = cand[grp]
            ri, ci = linear_sum_assignment(costs)
            e = edge[ri, ci]
            out.append(e[e >= 0])
    return np.concatenate(out)


def match_instances(
    pred: np.ndarray, gt: np.ndarray, thresholds=(0.5,), ov: Overlaps | None = None
) -> list[MatchCounts]:
    """Optimal one-to-one matching of predicted to reference objects at each IoU threshold.

    Counts equal stardist.matching.matching(gt, pred, thresh=t) exactly (criterion 'iou', IoU >= t matches).
    """
    if ov is None:
        ov = overlaps(pred, gt)
    order = np.argsort(-ov.iou, kind="stable")
    sorted_iou = ov.iou[order]
    res = []
    for t in thresholds:
        t = float(t)
        if t >= 0.5:
            cut = int(np.searchsorted(-sorted_iou, -t, side="right"))  # number of pairs with iou >= t
            e = _match_unique(ov, order, cut)
        else:
            e = _match_general(ov, t)
        tp = len(e)
        iou = ov.iou[e]
        matched = np.stack([ov.gt_ids[ov.pair_gt[e]], ov.pred_ids[ov.pair_pred[e]]], axis=1).reshape(-1, 2)
        res.append(
            MatchCounts(
                thresh=t,
                tp=tp,
                fp=ov.n_pred - tp,
                fn=ov.n_true - tp,
                sum_iou=float(iou.sum()),
                n_true=ov.n_true,
                n_pred=ov.n_pred,
                matched=matched,
                matched_iou=iou,
            )
        )
    return res


def instance_scores(tp: float, fp: float, fn: float, sum_iou: float) -> dict[str, float]:
    """precision, recall, f1, ap (= TP/(TP+FP+FN)), sq, rq, pq from matching counts (per image or summed).

    As stardist when there is an object: a score is 0 when TP = 0. With no object at all (TP = FP = FN = 0: an
    empty prediction of an empty reference) every score is 1.
    """
    tp, fp, fn = float(tp), float(fp), float(fn)
    if tp + fp + fn == 0:
        return dict(precision=1.0, recall=1.0, f1=1.0, ap=1.0, sq=1.0, rq=1.0, pq=1.0)
    if tp == 0:
        return dict(precision=0.0, recall=0.0, f1=0.0, ap=0.0, sq=0.0, rq=0.0, pq=0.0)
    f1 = 2 * tp / (2 * tp + fp + fn)
    return dict(
        precision=tp / (tp + fp),
        recall=tp / (tp + fn),
        f1=f1,
        ap=tp / (tp + fp + fn),
        sq=sum_iou / tp,
        rq=f1,
        pq=sum_iou / (tp + fp / 2 + fn / 2),
    )


def panoptic_quality(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """PQ, SQ, RQ of one class at IoU >= 0.5 (equals stardist's panoptic_quality)."""
    m = match_instances(pred, gt, (0.5,))[0]
    s = m.scores()
    return dict(pq=s["pq"], sq=s["sq"], rq=s["rq"], tp=m.tp, fp=m.fp, fn=m.fn)
