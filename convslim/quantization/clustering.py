"""Weight sharing by k-means (seed 001 section 1.2.2, seed 002 section 1.2; Deep Compression).

Each layer's weights are clustered into k values with scikit-learn's KMeans, initialised linearly
between the smallest and largest weight (Han et al. found linear initialisation keeps the rare
large weights, which matter most). The layer then stores only the k centroids and one index per
weight. Fine-tuning trains the centroids: the forward pass reads `centroids[indices]`, and
autograd's backward of that gather adds up the gradients of all weights in a cluster, which is
seed 001's equation (1), dL/dc_k = sum_{i,j} dL/dW_ij * 1(I_ij = k). Each centroid's step is that sum
divided by the number of weights it stands for (the mean), so one learning rate fits every layer and
every k: with the plain sum a centroid of a big layer moves thousands of times further than a weight
would, and on a base trained long with weight decay (small weights) 4 clusters never recovered
(22.9% after an epoch, against 81.5% after 0.3 epoch with the mean; README).
"""
import numpy as np
import torch
from torch import nn

from ..errors import ConvslimError


def kmeans_1d(values, k, *, seed=0):
    """(centroids, labels) of 1-D values; k is capped by the number of distinct values."""
    from sklearn.cluster import KMeans

    x = np.asarray(values, dtype=np.float64).reshape(-1, 1)
    distinct = np.unique(x)
    k = min(k, len(distinct))
    if k == len(distinct):
        labels = np.searchsorted(distinct, x[:, 0])
        return distinct.astype(np.float32), labels.astype(np.int64)
    init = np.linspace(x.min(), x.max(), k).reshape(-1, 1)
    km = KMeans(n_clusters=k, init=init, n_init=1, max_iter=100, tol=1e-8, random_state=seed).fit(x)
    order = np.argsort(km.cluster_centers_[:, 0])                     # centroids sorted ascending
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return km.cluster_centers_[order, 0].astype(np.float32), rank[km.labels_].astype(np.int64)


class ClusterWeight(nn.Module):
    """Weight parametrization: shared values `centroids[indices]`; the centroids are what trains."""

    def __init__(self, weight, clusters, *, seed=0):
        super().__init__()
        if not 2 <= clusters <= 256:
            raise ConvslimError(f"clusters must be from 2 to 256, got {clusters}")
        centroids, labels = kmeans_1d(weight.detach().cpu().reshape(-1).numpy(), clusters, seed=seed)
        self.centroids = nn.Parameter(torch.from_numpy(centroids))
        self.register_buffer("indices", torch.from_numpy(labels).reshape(weight.shape))
        sizes = torch.bincount(self.indices.reshape(-1), minlength=self.centroids.numel()).clamp(min=1)
        self.register_buffer("sizes", sizes.to(self.centroids.dtype), persistent=False)   # weights per centroid

    def forward(self, w):
        c = self.centroids
        c = c.detach() + (c - c.detach()) / self.sizes      # value: exactly the centroids; gradient: the cluster's mean
        return c[self.indices].to(w.dtype)

    @torch.no_grad()
    def encode(self, w):
        return self.indices.reshape(w.shape).clone(), self.centroids.detach().float().reshape(1, -1).clone()

    def extra_repr(self):
        return f"clusters={self.centroids.numel()}"


def cluster(model, clusters=16, *, layers=None, seed=0):
    """A copy of `model` whose conv and linear weights are shared per layer; latent weights frozen."""
    import copy

    from .fakequant import layers_of, quantize_weights

    sim = copy.deepcopy(model).cpu().eval()
    chosen = layers_of(sim) if layers is None else [(n, sim.get_submodule(n)) for n in layers]
    quantize_weights(sim, chosen, lambda n, m: ClusterWeight(m.weight, clusters, seed=seed))
    for _, mod in chosen:
        mod.parametrizations.weight.original.requires_grad_(False)   # only centroids train
    return sim
