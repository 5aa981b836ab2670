"""2-D embeddings of features (PCA, t-SNE) and their plot, coloured by domain.

t-SNE runs on the first 50 principal components (the usual denoising step, and much faster on wide
features); a fixed seed gives the same coordinates, so a notebook re-run draws the same picture.
"""

from __future__ import annotations

import numpy as np

from drsf_kit.analysis.gap import check_features
from drsf_kit.errors import ConfigError


def pca_embed(features, n_components: int = 2, seed: int = 0, return_variance: bool = False):
    """Project ``[N, d]`` features onto their first ``n_components`` principal components.

    With ``return_variance`` also returns the fraction of the variance each component explains.
    """
    from sklearn.decomposition import PCA

    x = check_features(features, "features")
    k = min(n_components, x.shape[0], x.shape[1])
    if k < 1:
        raise ConfigError(f"pca_embed: cannot take {n_components} components of features shaped {x.shape}")
    pca = PCA(n_components=k, random_state=seed)
    out = pca.fit_transform(x)
    ratio = np.r_[pca.explained_variance_ratio_, np.zeros(n_components - k)]
    if k < n_components:  # degenerate input (one feature): pad so callers always get N x n_components
        out = np.pad(out, ((0, 0), (0, n_components - k)))
    return (out.astype(np.float32), ratio) if return_variance else out.astype(np.float32)


def tsne_embed(features, seed: int = 0, perplexity: float = 30.0, pca_dims: int | None = 50,
               max_iter: int = 1000, n_jobs: int | None = None) -> np.ndarray:
    """t-SNE of ``[N, d]`` features to ``[N, 2]`` (scikit-learn, PCA init, PCA to ``pca_dims`` first).

    ``perplexity`` is lowered to (N - 1) / 3 for small samples, where scikit-learn would refuse it.
    The same features and ``seed`` give the same coordinates.
    """
    from sklearn.manifold import TSNE

    x = check_features(features, "features")
    if len(x) < 4:
        raise ConfigError(f"tsne_embed needs at least 4 points, got {len(x)}")
    if pca_dims is not None and x.shape[1] > pca_dims:
        x = pca_embed(x, n_components=min(pca_dims, len(x)), seed=seed).astype(np.float64)
    perp = float(min(perplexity, (len(x) - 1) / 3.0))
    tsne = TSNE(n_components=2, perplexity=perp, init="pca", learning_rate="auto", max_iter=max_iter,
                random_state=seed, n_jobs=n_jobs)
    return tsne.fit_transform(x).astype(np.float32)
