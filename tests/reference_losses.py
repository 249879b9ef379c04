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
