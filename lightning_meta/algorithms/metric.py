"""The base of the metric-based algorithms: one embedding network f_θ for support and query, and a rule that
compares each query with the support set. Nothing is adapted at test time; the comparison is the classifier.

Batch norm trains on the statistics of each training batch. In evaluation, ``batch_norm: running`` (the default)
normalises with the running averages gathered in training, so each query is classified on its own;
``batch_norm: transductive`` normalises each episode with its own statistics (support and queries), as in
training: the Relation Network's code never leaves training mode, so its published numbers are transductive.

``inference`` replaces the learner's own comparison in validation and test by a transductive rule on its features
(``lightning_meta.algorithms.transductive``: BD-CSPN or TIM), which classifies each episode's queries together.

A large pretrained backbone (``backbone: timm:...``, ``pretrained: true``) can stay as it was loaded
(``freeze_backbone``), and ``cache_features`` embeds each distinct image once per validation or test rather than once
per episode it appears in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_meta.algorithms.base import EmbeddingPictures, MetaLearner
from lightning_meta.algorithms.transductive import check_inference, transductive_scores
from lightning_meta.backbones import batch_statistics, build_backbone
from lightning_meta.episode import Episode
from lightning_meta.errors import ConfigError


def logsumexp_by_class(values: Tensor, labels: Tensor, n_way: int) -> Tensor:
    """log Σ_{i: y_i = n} exp(values_i) for each class n: values [T, NQ, NK] over the support examples, labels [T, NK]
    -> [T, NQ, N]."""
    in_class = F.one_hot(labels, n_way).transpose(1, 2).bool()  # [T, N, NK]
    return values[:, :, None].masked_fill(~in_class[:, None], float("-inf")).logsumexp(dim=-1)


class FeatureCache:
    """f_θ of every distinct image one validation or test has embedded, found by the image's bytes. Within one
    evaluation f_θ's weights and its running batch-norm statistics are fixed, so an image has the same features in
    every episode that draws it, and f_θ need run once per image rather than once per appearance (1,000 test
    episodes of 80 images draw each of CIFAR-FS's 12,000 test images about 7 times). A speed-up; the reference is
    f_θ on every episode's images (``cache_features: false``): the features agree up to float rounding, an image
    being embedded in a batch of other images.

    Embedded as the episodes come, new images arrive a few at a time once most have been seen, and a large network
    runs slowly on small batches; ``fill`` embeds a whole store ahead, in large batches."""

    def __init__(self, net: nn.Module) -> None:
        self.net = net
        self.features: dict[bytes, Tensor] = {}  # image bytes -> f_θ(x) [*z]

    def __call__(self, x: Tensor) -> Tensor:  # [M, *x] -> [M, *z]
        raw = x.detach().cpu().contiguous().flatten(1).view(torch.uint8).numpy()  # [M, bytes of one image]
        keys = [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in raw]
        new = {key: i for i, key in enumerate(keys) if key not in self.features}  # each new image, once
        if new:
            self.features.update(zip(new, self.net(x[list(new.values())])))
        return torch.stack([self.features[key] for key in keys])

    def fill(self, inputs: Iterable[Tensor]) -> None:
        """Embeds every batch of ``inputs`` (model inputs [B, *x]) ahead of the episodes that will draw them."""
        for x in inputs:
            self(x)


class MetricLearner(MetaLearner, EmbeddingPictures):
    """An embedding f_θ and ``predict`` scores; by default trained by the negative log-likelihood of the true
    class, the scores being log-probabilities up to a constant.

    Args:
        image_shape: input shape, e.g. (1, 28, 28).
        backbone: the embedding network f_θ, by name (see ``lightning_meta.backbones``).
        hidden: filters (or units) of the backbone.
        batch_norm: statistics of batch norm in evaluation, ``running`` or ``transductive`` (see the module
            docstring).
        inference: how validation and test classify an episode: ``none`` (the learner's own rule), ``bd_cspn`` or
            ``tim`` (transductive, on ``features``).
        inference_options: settings of that rule other than its paper's (e.g. ``{iterations: 100}`` for TIM).
        pretrained: weights of a ``torchvision:`` or ``timm:`` backbone: ``true`` for the library's published ones,
            or a state dict file (see ``lightning_meta.backbones``).
        freeze_backbone: keep f_θ as built or loaded: no gradient, and batch norm on its running statistics in
            training too.
        cache_features: in validation and test, embed each distinct image once (:class:`FeatureCache`; with
            ``batch_norm: running`` only, where an image's features do not depend on its episode).
        **kwargs: optimiser settings, see :class:`MetaLearner`.
    """

    transductive_inference: ClassVar[bool] = True  # classifies by embedding vectors, so model.inference applies

    def __init__(self, image_shape: tuple[int, ...], backbone: str = "conv4", hidden: int = 64,
                 batch_norm: Literal["running", "transductive"] = "running",
                 inference: Literal["none", "bd_cspn", "tim"] = "none", inference_options: dict[str, Any] | None = None,
                 pretrained: bool | str = False, freeze_backbone: bool = False, cache_features: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(image_shape, **kwargs)
        check_inference(inference, inference_options)
        if inference != "none" and not self.transductive_inference:
            raise ConfigError(f"model.inference {inference} classifies embedding vectors, but {type(self).__name__} "
                              f"compares examples with a learned module; set model.inference: none")
        if cache_features and batch_norm != "running":
            raise ConfigError("model.cache_features keeps an image's features across episodes, but with "
                              "model.batch_norm: transductive they depend on the episode; set batch_norm: running")
        self.f_theta = build_backbone(backbone, image_shape, pretrained=pretrained, hidden=hidden)
        with torch.no_grad():  # in eval mode, so that batch norm's running statistics are untouched
            self.z_shape = tuple(self.f_theta.eval()(torch.zeros(1, *image_shape)).shape[1:])  # [*z] of one input
        self.f_theta.train()
        if freeze_backbone:
            self.f_theta.requires_grad_(False)
        self.feature_cache: FeatureCache | None = None  # during a validation or test with cache_features

    def train(self, mode: bool = True) -> MetricLearner:
        super().train(mode)
        if self.hparams.freeze_backbone:
            self.f_theta.eval()  # batch norm keeps the statistics it was built or loaded with
        return self

    def on_validation_epoch_start(self) -> None:
        self.start_feature_cache("val")

    def on_test_epoch_start(self) -> None:
        self.start_feature_cache("test")

    @torch.no_grad()
    def start_feature_cache(self, subset: str) -> None:
        """With ``cache_features``, a new cache for this validation or test, filled ahead with the subset's whole
        class store where its episodes will draw more images than the store holds (and no transform changes
        them); else the images are embedded as the episodes bring them."""
        self.feature_cache = FeatureCache(self.f_theta) if self.hparams.cache_features else None
        data = self.trainer.datamodule
        if self.feature_cache is None or data is None or data.transforms.get(subset) is not None:
            return
        n, k, q = data.shapes[subset]
        try:
            images = len(data.store(subset).real_items())
        except NotImplementedError:  # a data module without a class store
            return
        if data.num_episodes[subset] * n * (k + q) >= images:
            self.feature_cache.fill(data.store_inputs(subset, self.device))

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self.feature_cache = None

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        self.feature_cache = None

    def embed(self, episode: Episode) -> tuple[Tensor, Tensor]:
        """f_θ of support and query in one pass (batch norm sees the whole episode; Sung et al.'s code
        embeds support and query in separate calls, a departure docs/algorithms.md names):
        [T, NK, *z] and [T, NQ, *z], where z is a vector or a feature map."""
        NK = episode.support.shape[1]
        x = torch.cat([episode.support, episode.query], dim=1)  # [T, NK+NQ, *x]
        f_theta = self.f_theta if self.feature_cache is None else self.feature_cache
        z = f_theta(x.flatten(0, 1)).unflatten(0, x.shape[:2])  # [T, NK+NQ, *z]
        return z[:, :NK], z[:, NK:]

    def test_embeddings(self, episode: Episode) -> tuple[Tensor, Tensor]:
        """``embed`` of a one-task episode with batch norm as in evaluation (for TensorBoard's projector)."""
        if self.hparams.batch_norm == "running":
            return self.embed(episode)
        with batch_statistics(self):
            return self.embed(episode)

    def features(self, episode: Episode) -> tuple[Tensor, Tensor]:
        """The vectors a transductive rule classifies, support [T, NK, D] and query [T, NQ, D], outside any graph:
        f_θ's embeddings, flattened."""
        z_support, z_query = self.embed(episode)
        return z_support.flatten(2).detach(), z_query.flatten(2).detach()

    def transductive(self, episode: Episode) -> Tensor:
        """Query scores [T, NQ, N] of the rule ``inference`` on ``features``."""
        z_support, z_query = self.features(episode)
        return transductive_scores(self.hparams.inference, self.hparams.inference_options, z_support,
                                   episode.support_labels, z_query, episode.n_way)

    def evaluate(self, episode: Episode) -> Tensor:
        classify = self.predict if self.hparams.inference == "none" else self.transductive
        if self.hparams.batch_norm == "running":
            return classify(episode)
        with batch_statistics(self):  # one episode at a time, so that its statistics are its own
            return torch.cat([classify(task) for task in episode.tasks()])

    def meta_loss(self, episode: Episode) -> tuple[Tensor, Tensor]:
        logits = self.predict(episode)  # [T, NQ, N], log p(y = k | x) up to a constant
        loss = F.cross_entropy(logits.flatten(0, 1), episode.query_labels.flatten())
        return loss, logits
