"""The Relation Network's batch norm statistics, against an embedding written out layer by layer.

Sung et al.'s code (github.com/floodsung/LearningToCompare_FSL) never leaves training mode and runs the sample
(support) images and the batch (query) images through the encoder in two calls, so each set is normalised with its
own statistics. Here support and query go through f_φ in one batch: both are normalised with the statistics of
the whole episode (docs/algorithms.md, "Relation Network", lists the departure). These tests pin that choice and
show that it is not the paper code's.
"""

import pytest
import torch
from torch import nn

from lightning_meta import Episode, RelationNetwork


def embed_by_hand(f_phi: nn.Module, sets: list[torch.Tensor]) -> list[torch.Tensor]:
    """f_φ on each of ``sets`` with every batch norm written out: each set normalised with its own mean and biased
    variance over its examples and positions, (x − μ) / √(σ² + ε) · γ + β. One set holding support and query is
    our choice; the support and the query as two sets is the paper code's."""
    sizes = [len(s) for s in sets]
    h = torch.cat(sets)
    for layer in (m for m in f_phi.modules() if not list(m.children())):
        if isinstance(layer, nn.BatchNorm2d):
            shape = (1, -1, 1, 1)
            parts = []
            for part in h.split(sizes):
                mean = part.mean(dim=(0, 2, 3), keepdim=True)
                var = ((part - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
                parts.append((part - mean) / torch.sqrt(var + layer.eps) * layer.weight.view(shape)
                             + layer.bias.view(shape))
            h = torch.cat(parts)
        else:
            h = layer(h)  # conv, ReLU, max-pool (and a memory-format change)
    return list(h.split(sizes))


def relation_scores(model: RelationNetwork, z_support: torch.Tensor, z_query: torch.Tensor, labels: torch.Tensor,
                    n_way: int) -> torch.Tensor:
    """g_φ on one task's embeddings: [NQ, N]."""
    z_class = model.class_features(z_support[None], labels[None], n_way)
    return model.g_phi(z_class, z_query[None])[0]


@pytest.fixture
def model_and_episode():
    torch.manual_seed(0)
    model = RelationNetwork((1, 28, 28), hidden=8, fc_hidden=4, batch_norm="transductive").double()
    with torch.no_grad():  # batch norm scales and shifts away from 1 and 0, so that they are checked too
        for norm in (m for m in model.f_theta.modules() if isinstance(m, nn.BatchNorm2d)):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    episode = Episode(torch.rand(2, 5, 1, 28, 28, dtype=torch.float64), torch.arange(5).repeat(2, 1),
                      torch.rand(2, 10, 1, 28, 28, dtype=torch.float64), torch.arange(5).repeat(2, 2), 5)
    return model, episode


def test_training_normalises_support_and_query_with_the_statistics_of_the_whole_episode(model_and_episode):
    """In training (one task per batch, as the configs), the embeddings and the relation scores equal those of
    ``embed_by_hand`` with support and query as one set, and differ from those with the paper code's two sets."""
    model, episode = model_and_episode
    task = episode.tasks()[0]
    support, query, labels = task.support[0], task.query[0], task.support_labels[0]
    model.train()
    z_support, z_query = model.embed(task)
    scores = model.predict(task)[0]
    with torch.no_grad():
        shared = embed_by_hand(model.f_theta, [torch.cat([support, query])])[0].split([5, 10])
        separate = embed_by_hand(model.f_theta, [support, query])
        shared_scores = relation_scores(model, *shared, labels, 5)
        separate_scores = relation_scores(model, *separate, labels, 5)
    assert torch.allclose(z_support[0], shared[0], atol=1e-10) and torch.allclose(z_query[0], shared[1], atol=1e-10)
    assert torch.allclose(scores, shared_scores, atol=1e-12)
    # the other choice gives other embeddings and other scores
    assert (z_support[0] - separate[0]).abs().max() > 0.05 and (z_query[0] - separate[1]).abs().max() > 0.05
    assert (scores - separate_scores).abs().max() > 1e-3


def test_transductive_evaluation_normalises_each_episode_as_one_set(model_and_episode):
    """``batch_norm: transductive`` in evaluation: each of two episodes scored with the statistics of its own
    support and query together; not with the paper code's separate support and query statistics, nor with the
    statistics of both episodes pooled."""
    model, episode = model_and_episode
    model.eval()
    with torch.no_grad():
        scores = model.evaluate(episode)  # [T, NQ, N]
        pooled = model.train().predict(episode)  # both tasks in one batch
        for t, task in enumerate(episode.tasks()):
            support, query, labels = task.support[0], task.query[0], task.support_labels[0]
            shared = embed_by_hand(model.f_theta, [torch.cat([support, query])])[0].split([5, 10])
            separate = embed_by_hand(model.f_theta, [support, query])
            assert torch.allclose(scores[t], relation_scores(model, *shared, labels, 5), atol=1e-12)
            assert (scores[t] - relation_scores(model, *separate, labels, 5)).abs().max() > 1e-3
    assert (scores - pooled).abs().max() > 1e-3
