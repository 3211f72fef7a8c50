"""Stage 4b: clusters grouped into concepts, by how the two models answer them.

One thing a model relies on can have several looks (a logo on different tiles, a shortcut
drawn in three colours), and any embedding that sees pixels puts each look in its own
cluster. The models themselves do not care about the look: shown a patch alone (pasted on
the baseline at its place, :mod:`imacs.responses`), they give every look the same answer.
So clusters are grouped by their *mean answer*: the centroid of their patches' responses.

The distance between two clusters is the Hellinger distance between their mean answers
(0 = answered alike, 1 = disjoint answers). Two clusters that B relies on significantly
more than A are compared by B's answers alone (and likewise for A): a logo B relies on is
one concept by what B makes of it, whatever A makes of the tile around it. Any other pair
is compared by both models' answers, averaged in square, each model weighted by how much it
relies on the two clusters (its mean share of attribution in them).

Clusters are merged by average linkage while the closest two groups are
nearer than ``--concept-distance`` (default 0.15), with one rule on top: a concept never
joins a cluster that B relies on significantly more with one that A relies on
significantly more (their ``diff`` intervals exclude 0 on opposite sides), so a concept's
claim never averages two opposite claims away.

Each concept then gets the same statistics as a cluster (:func:`imacs.comparison.
compare_clusters` over its patches), a rank by ``|diff|``, and its own what-if test.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .comparison import compare_clusters
from .settings import ComparisonSettings, ConceptSettings
from .stage import stage

if TYPE_CHECKING:
    from .responses import PatchViews


def claim_side(clusters: pd.DataFrame) -> np.ndarray:
    """(k,) per cluster id: +1 where B relies on it significantly more (``diff_lo > 0``),
    -1 where A does (``diff_hi < 0``), 0 otherwise."""
    t = clusters.set_index("cluster").reindex(range(len(clusters)))
    return np.where(t["diff_lo"] > 0, 1, np.where(t["diff_hi"] < 0, -1, 0)).astype(np.int64)


#: a model that gives one answer to this share of the patches alone or more says nothing
#: with its answers: concepts are not made from them
FLAT_SHARE = 0.98


def flat_answers(patches: pd.DataFrame) -> dict[str, float]:
    """Per model whose answers to the patches alone carry no information (one class for
    :data:`FLAT_SHARE` of the patches or more, e.g. every small patch on black reads
    "square"), the share of that answer; models whose answers differ are not listed."""
    out = {}
    for r in ("a", "b"):
        col = f"alone_{r}"
        if col in patches and len(patches):
            top = float(patches[col].value_counts(normalize=True).iloc[0])
            if top >= FLAT_SHARE:
                out[r] = top
    return out


def answer_distances(
    responses: np.ndarray,
    split: int,
    labels: np.ndarray,
    clusters: pd.DataFrame,
    flat: frozenset[str] | set[str] = frozenset(),
) -> np.ndarray:
    """(k, k) distances between the clusters' mean answers.

    Two clusters that the same model relies on significantly more are compared by that
    model's answers alone; any other pair by both models' answers, each weighted by how
    much that model relies on the two clusters (its mean share of attribution in them).

    Args:
        responses (numpy.ndarray): (n, d) response coordinates (:mod:`imacs.responses`:
            ``sqrt(p)`` of A's answer then B's, over ``sqrt(2)``).
        split (int): the number of columns of A's answer.
        labels (numpy.ndarray): (n,) cluster of each patch, 0..k-1.
        clusters (pandas.DataFrame): the clusters table (``cluster``, ``attr_a``,
            ``attr_b``, ``diff_lo``, ``diff_hi``).
        flat (set): models whose answers say nothing (:func:`flat_answers`): they are left
            out, and a pair only they could compare is kept apart (distance 1).
    """
    table = clusters.set_index("cluster").reindex(range(len(clusters)))
    k = len(table)
    side = claim_side(clusters)
    r = np.asarray(responses, np.float64) * np.sqrt(2.0)  # sqrt(p) per model
    counts = np.maximum(np.bincount(labels, minlength=k).astype(np.float64), 1.0)
    h2, w = {}, {}
    for role, cols in (("a", slice(0, split)), ("b", slice(split, None))):
        sums = np.zeros((k, r[:, cols].shape[1]))
        np.add.at(sums, labels, r[:, cols])
        centres = sums / counts[:, None]
        sq = (centres**2).sum(1)
        h2[role] = np.maximum(sq[:, None] + sq[None, :] - 2.0 * centres @ centres.T, 0.0) / 2.0
        share = np.clip(table[f"attr_{role}"].fillna(0.0).to_numpy(np.float64), 0.0, None)
        w[role] = share[:, None] + share[None, :] + 1e-6
        if role in flat:  # its answers say nothing: it cannot tell two clusters alike
            h2[role] = np.where(np.eye(k, dtype=bool), 0.0, 1.0)
    heard = [role for role in ("a", "b") if role not in flat]
    if len(heard) == 1:  # one model's answers say something: compare by those alone
        d2 = h2[heard[0]]
    else:
        d2 = (w["a"] * h2["a"] + w["b"] * h2["b"]) / (w["a"] + w["b"])
    both_b = (side[:, None] == 1) & (side[None, :] == 1)
    both_a = (side[:, None] == -1) & (side[None, :] == -1)
    d2 = np.where(both_b, h2["b"], np.where(both_a, h2["a"], d2))
    return np.sqrt(np.clip(d2, 0.0, 1.0))


def group_clusters(
    distances: np.ndarray, clusters: pd.DataFrame, settings: ConceptSettings
) -> np.ndarray:
    """The concept of each cluster: (k,) int64, concepts numbered by size (patches),
    largest first.

    Args:
        distances (numpy.ndarray): (k, k) from :func:`answer_distances`.
        clusters (pandas.DataFrame): the clusters table (``cluster``, ``n_patches``,
            ``diff_lo``, ``diff_hi``).
        settings (ConceptSettings): the merge distance.
    """
    k = len(distances)
    table = clusters.set_index("cluster").reindex(range(k))
    side = claim_side(clusters)
    groups: list[list[int]] = [[c] for c in range(k)]
    while len(groups) > 1:
        best, pair = settings.distance, None
        for i in range(len(groups)):
            for j in range(i + 1, len(groups)):
                sides = {int(side[c]) for c in groups[i] + groups[j]}
                if {1, -1} <= sides:
                    continue  # opposite significant claims stay apart
                link = float(distances[np.ix_(groups[i], groups[j])].mean())
                if link < best:
                    best, pair = link, (i, j)
        if pair is None:
            break
        i, j = pair
        groups[i] = sorted(groups[i] + groups[j])
        del groups[j]
    size = table["n_patches"].fillna(0).to_numpy()
    groups.sort(key=lambda g: (-size[g].sum(), g[0]))
    concept = np.empty(k, np.int64)
    for cid, g in enumerate(groups):
        concept[g] = cid
    return concept


def answer_summary(patches: pd.DataFrame, key: str, classes: list[str]) -> pd.DataFrame:
    """Per group (``key``: ``cluster`` or ``concept``), what each model most often answers
    to its patches alone: ``alone_a``/``alone_b`` (class name) and ``alone_a_share``/
    ``alone_b_share`` (share of the group's patches given that answer)."""
    out = {}
    names = np.asarray([*classes], dtype=object)
    for r in ("a", "b"):
        col = f"alone_{r}"
        top = patches.groupby(key)[col].agg(lambda s: s.value_counts().index[0])
        share = patches.groupby(key)[col].agg(lambda s: s.value_counts(normalize=True).iloc[0])
        idx = top.to_numpy(np.int64)
        out[col] = [names[i] if i < len(names) else str(i) for i in idx]
        out[f"{col}_share"] = share.to_numpy(np.float64)
    return pd.DataFrame(out, index=top.index).reset_index()


def concepts_table(
    concept_stats: pd.DataFrame, concept_of_cluster: np.ndarray, answers: pd.DataFrame
) -> pd.DataFrame:
    """The concepts table: the comparison's statistics per concept (its ``cluster`` column
    renamed ``concept``), the clusters it holds and what the models answer to it alone."""
    t = concept_stats.rename(columns={"cluster": "concept"})
    members = {
        int(c): [int(x) for x in np.flatnonzero(concept_of_cluster == c)] for c in t["concept"]
    }
    t.insert(2, "n_clusters", [len(members[int(c)]) for c in t["concept"]])
    t.insert(3, "clusters", [" ".join(map(str, members[int(c)])) for c in t["concept"]])
    return t.merge(answers, on="concept", how="left")


def group_into_concepts(
    views: PatchViews,
    patches: pd.DataFrame,
    clusters: pd.DataFrame,
    images: pd.DataFrame,
    classes: list[str],
    concepts: ConceptSettings,
    comparison: ComparisonSettings,
    flat: set[str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The concepts stage: ``patches`` and ``clusters`` with a ``concept`` column (and the
    clusters with what the models answer to them alone), and the concepts table.

    Args:
        views (PatchViews): the patches' responses (:mod:`imacs.responses`).
        patches (pandas.DataFrame): the patches table (``cluster``, ``alone_a``...).
        clusters (pandas.DataFrame): the clusters table of :func:`compare_clusters`.
        images (pandas.DataFrame): the images table indexed by ``image_id``.
        classes (list[str]): class names.
        concepts (ConceptSettings): the merge distance.
        comparison (ComparisonSettings): the statistics of each concept.
        flat (set, optional): the models whose answers say nothing. Default: None (found
            by :func:`flat_answers`).
    """
    labels = patches["cluster"].to_numpy()
    flat = set(flat_answers(patches)) if flat is None else flat
    distances = answer_distances(views.responses, views.split, labels, clusters, flat)
    concept_of = group_clusters(distances, clusters, concepts)
    patches = patches.assign(concept=concept_of[labels])
    clusters = clusters.assign(concept=concept_of[clusters["cluster"].to_numpy()])
    clusters = clusters.merge(answer_summary(patches, "cluster", classes), on="cluster")
    stats, _ = compare_clusters(
        patches.assign(cluster=patches["concept"]), images, classes, comparison
    )
    table = concepts_table(stats, concept_of, answer_summary(patches, "concept", classes))
    return patches, clusters, table


@stage(
    "concepts",
    reads=("views", "patches", "clusters", "images", "classes", "names", "warnings"),
    produces=("patches", "clusters", "concepts", "warnings"),
    settings=("concepts", "comparison"),
)
def concepts_stage(
    views: PatchViews,
    patches: pd.DataFrame,
    clusters: pd.DataFrame,
    images: pd.DataFrame,
    classes: list[str],
    names: dict[str, str],
    warnings: list[str],
    concepts: ConceptSettings,
    comparison: ComparisonSettings,
) -> dict[str, object]:
    """Clusters the models answer alike, grouped into concepts with their own statistics
    (and a warning when a model's answers say nothing, so concepts do not rest on them)."""
    flat = flat_answers(patches)
    patches, clusters, table = group_into_concepts(
        views, patches, clusters, images.set_index("image_id"), classes, concepts, comparison,
        flat=set(flat),
    )  # fmt: skip
    return {
        "patches": patches,
        "clusters": clusters,
        "concepts": table,
        "warnings": [*warnings, *flat_warnings(flat, patches, classes, names)],
    }


def flat_warnings(
    flat: dict[str, float], patches: pd.DataFrame, classes: list[str], names: dict[str, str]
) -> list[str]:
    """The sentence :func:`flat_answers` earns each model, and what the concepts became."""
    out = []
    for r, share in flat.items():
        k = int(patches[f"alone_{r}"].value_counts().index[0])
        answer = classes[k] if k < len(classes) else str(k)
        then = (
            "so every cluster is its own concept"
            if len(flat) == 2
            else f"so concepts rest on {'B' if r == 'a' else 'A'}'s answers alone"
        )
        out.append(
            f"model {r.upper()} ({names[r]}) answers {answer} to {share:.0%} of the patches "
            f"shown alone: its answers say nothing about what a patch is, {then}"
        )
    return out
