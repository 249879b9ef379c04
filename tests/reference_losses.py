"""Plain numpy references for every loss: explicit loops over pairs and triplets, in float64.

Written from the formulas of the loss docstrings, independently of the Keras code under test.
"""

import itertools

import numpy as np


def distance_matrix(embeddings, squared=False):
    e = np.asarray(embeddings, dtype=np.float64)
    n = len(e)
    d = np.zeros((n, n))
    for i, j in itertools.product(range(n), repeat=2):
        d[i, j] = np.sum((e[i] - e[j]) ** 2)
    return d if squared else np.sqrt(d)


def cosine_matrix(embeddings):
    e = np.asarray(embeddings, dtype=np.float64)
    norms = np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    e = e / norms
    return e @ e.T


def batch_all(labels, embeddings, margin, squared=False):
    labels = np.ravel(labels)
    d = distance_matrix(embeddings, squared)
    total, positive, valid = 0.0, 0, 0
    for a, p, n in itertools.product(range(len(labels)), repeat=3):
        if a != p and labels[a] == labels[p] and labels[n] != labels[a]:
            valid += 1
            value = d[a, p] - d[a, n] + margin
            if value > 0:
                total += value
                positive += 1
    loss = total / positive if positive else 0.0
    return loss, (positive / valid if valid else 0.0)


def batch_hard(labels, embeddings, margin, squared=False):
    labels = np.ravel(labels)
    d = distance_matrix(embeddings, squared)
    losses = []
    for a in range(len(labels)):
        positives = [d[a, p] for p in range(len(labels)) if p != a and labels[p] == labels[a]]
        negatives = [d[a, n] for n in range(len(labels)) if labels[n] != labels[a]]
        if not positives or not negatives:
            continue
        difference = max(positives) - min(negatives)
        losses.append(np.log1p(np.exp(difference)) if margin == "soft" else max(difference + margin, 0.0))
    return float(np.mean(losses)) if losses else 0.0


def batch_semihard(labels, embeddings, margin, squared=False):
    labels = np.ravel(labels)
    d = distance_matrix(embeddings, squared)
    total, pairs = 0.0, 0
    for a, p in itertools.product(range(len(labels)), repeat=2):
        if a == p or labels[a] != labels[p]:
            continue
        pairs += 1
        negatives = [d[a, n] for n in range(len(labels)) if labels[n] != labels[a]]
        if not negatives:
            continue
        farther = [x for x in negatives if x > d[a, p]]
        chosen = min(farther) if farther else max(negatives)
        total += max(d[a, p] - chosen + margin, 0.0)
    return total / pairs if pairs else 0.0


def contrastive(labels, embeddings, margin=1.0):
    labels = np.ravel(labels)
    d = distance_matrix(embeddings)
    values = []
    for i, j in itertools.combinations(range(len(labels)), 2):
        if labels[i] == labels[j]:
            values.append(d[i, j] ** 2)
        else:
            values.append(max(margin - d[i, j], 0.0) ** 2)
    return float(np.mean(values)) if values else 0.0


def _logsumexp(values):
    values = np.asarray(values, dtype=np.float64)
    top = values.max()
    return top + np.log(np.sum(np.exp(values - top)))


def lifted(labels, embeddings, margin=1.0):
    labels = np.ravel(labels)
    d = distance_matrix(embeddings)
    n = len(labels)
    total, pairs = 0.0, 0
    for i, j in itertools.combinations(range(n), 2):
        if labels[i] != labels[j]:
            continue
        pairs += 1
        terms = [margin - d[i, k] for k in range(n) if labels[k] != labels[i]]
        terms += [margin - d[j, k] for k in range(n) if labels[k] != labels[j]]
        if not terms:
            continue
        objective = _logsumexp(terms) + d[i, j]
        total += max(objective, 0.0) ** 2
    return total / (2 * pairs) if pairs else 0.0


def proxy_nca(labels, embeddings, proxies, scale):
    labels = np.ravel(labels)
    x = np.asarray(embeddings, dtype=np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    p = np.asarray(proxies, dtype=np.float64)
    p = p / np.linalg.norm(p, axis=1, keepdims=True)
    losses = []
    for i in range(len(x)):
        logits = [-scale * np.sum((x[i] - p[c]) ** 2) for c in range(len(p))]
        losses.append(_logsumexp(logits) - logits[labels[i]])
    return float(np.mean(losses))


def multi_similarity(labels, embeddings, alpha=2.0, beta=50.0, base=0.5, epsilon=0.1):
    labels = np.ravel(labels)
    s = cosine_matrix(embeddings)
    n = len(labels)
    losses = []
    for a in range(n):
        positives = [s[a, p] for p in range(n) if p != a and labels[p] == labels[a]]
        negatives = [s[a, k] for k in range(n) if labels[k] != labels[a]]
        kept_pos = [x for x in positives if negatives and x - epsilon < max(negatives)]
        kept_neg = [x for x in negatives if positives and x + epsilon > min(positives)]
        pos_term = np.log1p(sum(np.exp(-alpha * (x - base)) for x in kept_pos)) / alpha
        neg_term = np.log1p(sum(np.exp(beta * (x - base)) for x in kept_neg)) / beta
        losses.append(pos_term + neg_term)
    return float(np.mean(losses))


# Anchors against references: the anchors are the rows of `embeddings`, the positives and negatives
# rows of `ref_embeddings`. With `remove_diagonal`, reference i is anchor i itself, never its positive.


def cross_distance_matrix(embeddings, ref_embeddings, squared=False):
    e = np.asarray(embeddings, dtype=np.float64)
    r = np.asarray(ref_embeddings, dtype=np.float64).reshape(-1, e.shape[1])
    d = np.zeros((len(e), len(r)))
    for a, j in itertools.product(range(len(e)), range(len(r))):
        d[a, j] = np.sum((e[a] - r[j]) ** 2)
    return d if squared else np.sqrt(d)


def _reference_pairs(labels, ref_labels, remove_diagonal, relation=None):
    """(positive, negative): functions of (anchor a, reference j) -> bool.

    With a `relation` [B, R] (1 positive, -1 negative, 0 neither) it decides instead of the labels."""
    labels, ref_labels = np.ravel(labels), np.ravel(ref_labels)

    def positive(a, j):
        same = labels[a] == ref_labels[j] if relation is None else relation[a][j] == 1
        return same and not (remove_diagonal and a == j)

    def negative(a, j):
        return labels[a] != ref_labels[j] if relation is None else relation[a][j] == -1

    return positive, negative


def batch_all_refs(
    labels, embeddings, ref_labels, ref_embeddings, margin, squared=False, remove_diagonal=True, relation=None
):
    d = cross_distance_matrix(embeddings, ref_embeddings, squared)
    positive, negative = _reference_pairs(labels, ref_labels, remove_diagonal, relation)
    total, num_positive, valid = 0.0, 0, 0
    for a, p, n in itertools.product(range(d.shape[0]), range(d.shape[1]), range(d.shape[1])):
        if positive(a, p) and negative(a, n):
            valid += 1
            value = d[a, p] - d[a, n] + margin
            if value > 0:
                total += value
                num_positive += 1
    return (total / num_positive if num_positive else 0.0), (num_positive / valid if valid else 0.0)


def batch_hard_refs(
    labels, embeddings, ref_labels, ref_embeddings, margin, squared=False, remove_diagonal=True, relation=None
):
    d = cross_distance_matrix(embeddings, ref_embeddings, squared)
    positive, negative = _reference_pairs(labels, ref_labels, remove_diagonal, relation)
    losses = []
    for a in range(d.shape[0]):
        positives = [d[a, j] for j in range(d.shape[1]) if positive(a, j)]
        negatives = [d[a, j] for j in range(d.shape[1]) if negative(a, j)]
        if positives and negatives:
            difference = max(positives) - min(negatives)
            losses.append(np.log1p(np.exp(difference)) if margin == "soft" else max(difference + margin, 0.0))
    return float(np.mean(losses)) if losses else 0.0


def batch_semihard_refs(
    labels, embeddings, ref_labels, ref_embeddings, margin, squared=False, remove_diagonal=True, relation=None
):
    d = cross_distance_matrix(embeddings, ref_embeddings, squared)
    positive, negative = _reference_pairs(labels, ref_labels, remove_diagonal, relation)
    total, pairs = 0.0, 0
    for a, p in itertools.product(range(d.shape[0]), range(d.shape[1])):
        if not positive(a, p):
            continue
        pairs += 1
        negatives = [d[a, n] for n in range(d.shape[1]) if negative(a, n)]
        if negatives:
            farther = [x for x in negatives if x > d[a, p]]
            chosen = min(farther) if farther else max(negatives)
            total += max(d[a, p] - chosen + margin, 0.0)
    return total / pairs if pairs else 0.0


def contrastive_refs(labels, embeddings, ref_labels, ref_embeddings, margin=1.0, remove_diagonal=True, relation=None):
    d = cross_distance_matrix(embeddings, ref_embeddings)
    positive, negative = _reference_pairs(labels, ref_labels, remove_diagonal, relation)
    values = []
    for a, j in itertools.product(range(d.shape[0]), range(d.shape[1])):
        if positive(a, j):
            values.append(d[a, j] ** 2)
        elif negative(a, j):
            values.append(max(margin - d[a, j], 0.0) ** 2)
    return float(np.mean(values)) if values else 0.0


def lifted_refs(labels, embeddings, ref_labels, ref_embeddings, margin=1.0, remove_diagonal=True, reduction="all",
                relation=None):
    """J_ar = log(Σ_{k neg of a, k a reference} e^(m - D_ak) + Σ_{b neg of r, b an anchor} e^(m - D_br)) + D_ar;
    the mean of relu(J_ar)² / 2 over the positive pairs ("all") or over those with J_ar > 0 ("nonzero")."""
    d = cross_distance_matrix(embeddings, ref_embeddings)
    positive, negative = _reference_pairs(labels, ref_labels, remove_diagonal, relation)
    values = []
    for a, r in itertools.product(range(d.shape[0]), range(d.shape[1])):
        if not positive(a, r):
            continue
        terms = [margin - d[a, k] for k in range(d.shape[1]) if negative(a, k)]
        terms += [margin - d[b, r] for b in range(d.shape[0]) if negative(b, r)]
        values.append(max(_logsumexp(terms) + d[a, r], 0.0) ** 2 / 2 if terms else 0.0)
    return _mean(values, reduction)


def multi_similarity_refs(
    labels,
    embeddings,
    ref_labels,
    ref_embeddings,
    alpha=2.0,
    beta=50.0,
    base=0.5,
    epsilon=0.1,
    remove_diagonal=True,
    reduction="all",
    relation=None,
):
    """The mean of the anchors' losses ("all") or of those > 0 ("nonzero")."""
    e = np.asarray(embeddings, dtype=np.float64)
    r = np.asarray(ref_embeddings, dtype=np.float64).reshape(-1, e.shape[1])
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    r = r / np.maximum(np.linalg.norm(r, axis=1, keepdims=True), 1e-12)
    positive, negative = _reference_pairs(labels, ref_labels, remove_diagonal, relation)
    losses = []
    for a in range(len(e)):
        positives = [e[a] @ r[j] for j in range(len(r)) if positive(a, j)]
        negatives = [e[a] @ r[j] for j in range(len(r)) if negative(a, j)]
        kept_pos = [x for x in positives if negatives and x - epsilon < max(negatives)]
        kept_neg = [x for x in negatives if positives and x + epsilon > min(positives)]
        pos_term = np.log1p(sum(np.exp(-alpha * (x - base)) for x in kept_pos)) / alpha
        neg_term = np.log1p(sum(np.exp(beta * (x - base)) for x in kept_neg)) / beta
        losses.append(pos_term + neg_term)
    return _mean(losses, reduction)


# The loss options of the PyTorch online-metric-learning project, written out from its README's formulas
# on squared euclidean distances D² (pass squared=True for its D²), with this library's definitions of the
# pairs: a != p (that project also counts a = p as a positive pair), and, with `remove_diagonal`,
# reference i is anchor i. `reduction`: "all" averages over every term, "nonzero" over the terms > 0.


def _mean(values, reduction):
    kept = values if reduction == "all" else [value for value in values if value > 0]
    return float(np.mean(kept)) if kept else 0.0


def contrastive_options_refs(
    labels, embeddings, ref_labels, ref_embeddings, margin, hinge="distance", reduction="all", remove_diagonal=True
):
    """Per pair: y·d² + (1 - y)·[m - d]_+² (hinge "distance") or y·D² + (1 - y)·[m - D²]_+ ("squared_distance")."""
    d = cross_distance_matrix(embeddings, ref_embeddings)
    positive, negative = _reference_pairs(labels, ref_labels, remove_diagonal)
    values = []
    for a, j in itertools.product(range(d.shape[0]), range(d.shape[1])):
        if positive(a, j):
            values.append(d[a, j] ** 2)
        elif negative(a, j):
            values.append(max(margin - d[a, j], 0.0) ** 2 if hinge == "distance" else max(margin - d[a, j] ** 2, 0.0))
    return _mean(values, reduction)


def batch_all_options_refs(labels, embeddings, ref_labels, ref_embeddings, margin, squared=False, reduction="nonzero",
                           remove_diagonal=True):
    """(loss, fraction): 1/N Σ [d_ap + m - d_an]_+ over the triplets the reduction counts ("triplet, no mining")."""
    d = cross_distance_matrix(embeddings, ref_embeddings, squared)
    positive, negative = _reference_pairs(labels, ref_labels, remove_diagonal)
    values = [
        max(d[a, p] - d[a, n] + margin, 0.0)
        for a, p, n in itertools.product(range(d.shape[0]), range(d.shape[1]), range(d.shape[1]))
        if positive(a, p) and negative(a, n)
    ]
    fraction = sum(value > 0 for value in values) / len(values) if values else 0.0
    return _mean(values, reduction), fraction


def batch_hard_all_positives_refs(labels, embeddings, ref_labels, ref_embeddings, margin, squared=False,
                                  reduction="all", remove_diagonal=True):
    """"Triplet, hardest mining": per positive pair (a, p), [d_ap + m - min_n d_an]_+ (softplus for "soft")."""
    d = cross_distance_matrix(embeddings, ref_embeddings, squared)
    positive, negative = _reference_pairs(labels, ref_labels, remove_diagonal)
    values = []
    for a in range(d.shape[0]):
        negatives = [d[a, n] for n in range(d.shape[1]) if negative(a, n)]
        for p in range(d.shape[1]):
            if positive(a, p) and negatives:
                difference = d[a, p] - min(negatives)
                values.append(np.log1p(np.exp(difference)) if margin == "soft" else max(difference + margin, 0.0))
    return _mean(values, reduction)


def batch_hard_options_refs(labels, embeddings, ref_labels, ref_embeddings, margin, squared=False, reduction="all",
                            remove_diagonal=True):
    """Batch-hard with a reduction: per anchor [max_p d_ap + m - min_n d_an]_+, averaged as `reduction` says."""
    d = cross_distance_matrix(embeddings, ref_embeddings, squared)
    positive, negative = _reference_pairs(labels, ref_labels, remove_diagonal)
    values = []
    for a in range(d.shape[0]):
        positives = [d[a, j] for j in range(d.shape[1]) if positive(a, j)]
        negatives = [d[a, j] for j in range(d.shape[1]) if negative(a, j)]
        if positives and negatives:
            values.append(max(max(positives) - min(negatives) + margin, 0.0))
    return _mean(values, reduction)


def batch_semihard_options_refs(labels, embeddings, ref_labels, ref_embeddings, margin, squared=False,
                                reduction="all", remove_diagonal=True):
    """Semi-hard with a reduction: every positive pair's term (0 without a negative), averaged as `reduction` says."""
    d = cross_distance_matrix(embeddings, ref_embeddings, squared)
    positive, negative = _reference_pairs(labels, ref_labels, remove_diagonal)
    values = []
    for a, p in itertools.product(range(d.shape[0]), range(d.shape[1])):
        if positive(a, p):
            negatives = [d[a, n] for n in range(d.shape[1]) if negative(a, n)]
            farther = [x for x in negatives if x > d[a, p]]
            chosen = min(farther) if farther else (max(negatives) if negatives else None)
            values.append(0.0 if chosen is None else max(d[a, p] - chosen + margin, 0.0))
    return _mean(values, reduction)
