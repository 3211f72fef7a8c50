"""Stage 3b: one vector per patch; clusters are made in this space.

``--embedding`` chooses the space (:class:`EmbeddingSettings`):

* ``handcrafted`` (the default): colour and texture statistics of the patch pixels
  (below), independent of both models: groups by appearance, so one concept with several
  looks is several clusters, which :mod:`imacs.concepts` then groups by the models'
  answers. The cheapest, and it needs nothing from the models.
* ``models``: what the two models make of the patch alone, its response
  (:mod:`imacs.responses`): patches both models answer alike land together, whatever
  their colour or shape. Needs no hooks, so TorchScript works; the responses are computed
  for the concepts anyway, so it costs nothing more.
* ``encoder:FILE`` / ``timm:NAME``: a user's image encoder on the patch crops
  (:mod:`imacs.encoders`), L2-normalised: groups by what that encoder sees.

Every choice is reduced by PCA to at most ``dims`` dimensions. The handcrafted features:
each patch (resized to ``size`` x ``size`` RGB) is described by five blocks of features:

* colour statistics: mean and spread in an opponent colour space (6)
* colour histogram: a 4x4x4 joint RGB histogram, square-rooted (64)
* texture: gradient-orientation histograms over the patch and its four quadrants (40)
* texture energy: mean gradient magnitude and band-pass energy at three scales (4)
* layout: a 4x4 grey thumbnail minus its mean (16)

Each feature is standardised, each block is weighted so it counts equally in distances,
and PCA reduces the result to ``n_components`` dimensions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from sklearn.decomposition import PCA

from .settings import ConceptSettings, EmbeddingSettings
from .stage import stage

if TYPE_CHECKING:
    from .encoders import LoadedEncoder
    from .responses import PatchViews


def embed(
    settings: EmbeddingSettings, pixels: np.ndarray, views: PatchViews, seed: int
) -> np.ndarray:
    """The (n, <= dims) float32 embedding chosen by ``settings``.

    Args:
        settings (EmbeddingSettings): which embedding.
        pixels (numpy.ndarray): (n, S, S, 3) uint8 patch pixels (``handcrafted``).
        views (PatchViews): the patches' responses and encoder vectors.
        seed (int): PCA's seed.
    """
    return fit_embedding(settings, pixels, views, seed)[0]


class FittedEmbedding:
    """The embedding of a run's patches, kept to place other regions of its images in the
    same space (what-if removal assigns every region of an image to a cluster).

    Args:
        kind (str): the embedding's ``kind`` (see :class:`EmbeddingSettings`).
        patch_embedder (PatchEmbedder, optional): the fitted hand-made features
            (``handcrafted``).
        mean (numpy.ndarray, optional): the centre subtracted (``models``, encoders).
        pca (sklearn.decomposition.PCA, optional): the fitted reduction, if any.
    """

    def __init__(
        self,
        kind: str,
        patch_embedder: PatchEmbedder | None = None,
        mean: np.ndarray | None = None,
        pca: PCA | None = None,
    ) -> None:
        self.kind = kind
        self.patch_embedder = patch_embedder
        self.mean = mean
        self.pca = pca

    @property
    def needs_pixels(self) -> bool:
        """Whether :meth:`transform` reads pixels (else the regions' responses or encoder
        vectors)."""
        return self.kind == "handcrafted"

    def transform(self, pixels: np.ndarray | None, views: PatchViews | None) -> np.ndarray:
        """(m, d) float32: regions in the patches' embedding space.

        Args:
            pixels (numpy.ndarray, optional): (m, S, S, 3) uint8 region pixels, made as the
                patches' are (``handcrafted``).
            views (PatchViews, optional): the regions' responses / encoder vectors.
        """
        if self.kind == "handcrafted":
            if self.patch_embedder is None or pixels is None:
                raise ValueError("the handcrafted embedding needs pixels and its features")
            return self.patch_embedder.transform(pixels)
        if views is None:
            raise ValueError(f"the {self.kind} embedding needs the regions' views")
        x = _space_input(self.kind, views)
        x = x - (self.mean if self.mean is not None else 0.0)
        return (self.pca.transform(x) if self.pca is not None else x).astype(np.float32)


def _space_input(kind: str, views: PatchViews) -> np.ndarray:
    if kind == "models":
        return np.asarray(views.responses, np.float64)
    if views.encoded is None:
        raise ValueError("an encoder embedding needs the encoder's vectors")
    x = np.asarray(views.encoded, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def fit_embedding(
    settings: EmbeddingSettings, pixels: np.ndarray, views: PatchViews, seed: int
) -> tuple[np.ndarray, FittedEmbedding | None]:
    """:func:`embed`, and the fitted embedding that places other regions in the same space
    (None for fewer than 2 patches)."""
    n = len(pixels)
    if n < 2:
        return np.zeros((n, 1), np.float32), None
    if settings.kind == "handcrafted":
        embedder = PatchEmbedder(n_components=settings.dims, random_state=seed)
        return embedder.fit_transform(pixels), FittedEmbedding("handcrafted", embedder)
    x = _space_input(settings.kind, views)
    mean = x.mean(axis=0)
    pca = None
    if x.shape[1] > settings.dims:
        k = int(min(settings.dims, x.shape[0]))
        pca = PCA(n_components=k, random_state=seed, svd_solver="full").fit(x - mean)
    fitted = FittedEmbedding(settings.kind, mean=mean, pca=pca)
    return fitted.transform(None, views), fitted


BLOCKS = ("colour_stats", "colour_hist", "orientation", "energy", "layout")


def patch_features(pixels: np.ndarray) -> tuple[np.ndarray, list[slice]]:
    """Hand-made visual features of patches.

    Args:
        pixels (numpy.ndarray): (n, S, S, 3) uint8 patches, S divisible by 4.

    Returns:
        (n, 130) float64 features and the slice of each block in :data:`BLOCKS` order.
    """
    if pixels.ndim != 4 or pixels.shape[-1] != 3 or pixels.shape[1] % 4 or pixels.shape[2] % 4:
        raise ValueError("pixels must be (n, S, S, 3) with S divisible by 4")
    x = pixels.astype(np.float64) / 255.0
    n, s = x.shape[0], x.shape[1]
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    opp = np.stack([(r - g) / np.sqrt(2), (r + g - 2 * b) / np.sqrt(6), (r + g + b) / np.sqrt(3)])
    colour_stats = np.concatenate([opp.mean(axis=(2, 3)).T, opp.std(axis=(2, 3)).T], axis=1)

    q = np.minimum((pixels // 64).astype(np.int64), 3)
    codes = (q[..., 0] * 16 + q[..., 1] * 4 + q[..., 2]).reshape(n, -1)
    hist = np.zeros((n, 64))
    np.add.at(hist, (np.repeat(np.arange(n), codes.shape[1]), codes.ravel()), 1.0)
    colour_hist = np.sqrt(hist / codes.shape[1])

    grey = opp[2] / np.sqrt(3)
    gy, gx = np.gradient(grey, axis=(1, 2))
    mag = np.hypot(gx, gy)
    ang = np.mod(np.arctan2(gy, gx), np.pi)
    obin = np.minimum((ang / np.pi * 8).astype(np.int64), 7)
    orientation = [_orientation_hist(obin, mag)]
    h2 = s // 2
    for ys in (slice(0, h2), slice(h2, s)):
        for xs in (slice(0, h2), slice(h2, s)):
            orientation.append(_orientation_hist(obin[:, ys, xs], mag[:, ys, xs]))
    orientation_f = np.concatenate(orientation, axis=1)

    energy = [mag.mean(axis=(1, 2))]
    level = grey
    for _ in range(3):
        down = _downsample2(level)
        up = np.repeat(np.repeat(down, 2, axis=1), 2, axis=2)
        energy.append(np.sqrt(((level - up) ** 2).mean(axis=(1, 2))))
        level = down
    energy_f = np.stack(energy, axis=1)

    thumb = grey.reshape(n, 4, s // 4, 4, s // 4).mean(axis=(2, 4)).reshape(n, 16)
    layout = thumb - thumb.mean(axis=1, keepdims=True)

    blocks = [colour_stats, colour_hist, orientation_f, energy_f, layout]
    slices, start = [], 0
    for blk in blocks:
        slices.append(slice(start, start + blk.shape[1]))
        start += blk.shape[1]
    return np.concatenate(blocks, axis=1), slices


def _orientation_hist(obin: np.ndarray, mag: np.ndarray) -> np.ndarray:
    n = obin.shape[0]
    hist = np.zeros((n, 8))
    np.add.at(
        hist,
        (np.repeat(np.arange(n), obin[0].size), obin.reshape(n, -1).ravel()),
        mag.reshape(n, -1).ravel(),
    )
    return hist / (hist.sum(axis=1, keepdims=True) + 1e-8)


def _downsample2(a: np.ndarray) -> np.ndarray:
    n, h, w = a.shape
    return a[:, : h - h % 2, : w - w % 2].reshape(n, h // 2, 2, w // 2, 2).mean(axis=(2, 4))


class PatchEmbedder:
    """Embed patch pixels into a space where similar-looking patches are close.

    Args:
        n_components (int): output dimensions. Default: 32.
        random_state (int): seed for PCA's solver. Default: 0.

    Attributes:
        mean_ (numpy.ndarray): per-feature mean learned by :meth:`fit`.
        scale_ (numpy.ndarray): per-feature scale (std times block weight).
        pca_ (sklearn.decomposition.PCA): the fitted reduction.
    """

    def __init__(self, n_components: int = 32, random_state: int = 0) -> None:
        self.n_components = n_components
        self.random_state = random_state

    def fit(self, pixels: np.ndarray) -> PatchEmbedder:
        """Learn standardisation and PCA from (n, S, S, 3) uint8 patches."""
        self._fit_transform(pixels)
        return self

    def fit_transform(self, pixels: np.ndarray) -> np.ndarray:
        """Fit, then return the (n, k) float32 embedding of ``pixels``."""
        return self._fit_transform(pixels)

    def transform(self, pixels: np.ndarray) -> np.ndarray:
        """Embed (n, S, S, 3) uint8 patches with the fitted transform."""
        if not hasattr(self, "pca_"):
            raise RuntimeError("PatchEmbedder is not fitted; call fit first")
        feats, _ = patch_features(pixels)
        return self.pca_.transform((feats - self.mean_) / self.scale_).astype(np.float32)

    def _fit_transform(self, pixels: np.ndarray) -> np.ndarray:
        if len(pixels) < 2:
            raise ValueError("need at least 2 patches to fit an embedding")
        feats, slices = patch_features(pixels)
        self.mean_ = feats.mean(axis=0)
        std = feats.std(axis=0)
        std[std < 1e-8] = 1.0
        weight = np.empty(feats.shape[1])
        for sl in slices:  # every block weighs the same in squared distances
            weight[sl] = 1.0 / np.sqrt(sl.stop - sl.start)
        self.scale_ = std / weight
        z = (feats - self.mean_) / self.scale_
        k = int(min(self.n_components, z.shape[0], z.shape[1]))
        self.pca_ = PCA(n_components=k, random_state=self.random_state, svd_solver="full")
        return self.pca_.fit_transform(z).astype(np.float32)


@stage(
    "embedding",
    reads=("pixels", "views", "encoder"),
    produces=("embedding", "embedding_info", "embedding_space"),
    settings=("embedding", "seed", "concepts"),
)
def embedding_stage(
    pixels: np.ndarray,
    views: PatchViews,
    encoder: LoadedEncoder | None,
    embedding: EmbeddingSettings,
    seed: int,
    concepts: ConceptSettings,
) -> dict[str, object]:
    """One vector per patch, what the run's manifest says of the embedding, and the fitted
    embedding (what-if removal places every region of an image in the same space)."""
    emb, space = fit_embedding(embedding, pixels, views, seed)
    info = {
        "kind": embedding.kind,
        "dims": int(emb.shape[1]),
        "encoder": encoder.describe() if encoder else None,
        "response_dims": int(views.responses.shape[1]),
        "concept_distance": concepts.distance,  # the space concepts are grouped in
    }
    return {"embedding": emb, "embedding_info": info, "embedding_space": space}
