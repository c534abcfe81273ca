import math

import pytorch_lightning as pl
import torch
from torch import nn

from lightning_meta import Episode, ProtoNet, SyntheticDataModule


def test_logits_and_loss_by_hand():
    """2-way 2-shot in a 2-d embedding space (identity embedding), one query, worked out by hand.

    Prototypes: class 0 = mean((0,0), (2,0)) = (1,0); class 1 = mean((0,2), (0,4)) = (0,3).
    Query (1,1): squared distances 1 and 5, logits (-1, -5); true class 0, so the loss is log(1 + e^-4).
    """
    model = ProtoNet(image_shape=(2,), backbone="mlp")
    model.f_theta = nn.Identity()
    episode = Episode(
        support=torch.tensor([[[0.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 4.0]]]),  # classes interleaved on purpose
        support_labels=torch.tensor([[0, 1, 0, 1]]),
        query=torch.tensor([[[1.0, 1.0]]]),
        query_labels=torch.tensor([[0]]),
        n_way=2,
    )
    loss, logits = model.meta_loss(episode)
    assert torch.allclose(logits, torch.tensor([[[-1.0, -5.0]]]))
    assert math.isclose(loss.item(), math.log(1 + math.exp(-4)), rel_tol=1e-5)


def test_tasks_in_a_batch_do_not_mix():
    torch.manual_seed(0)
    model = ProtoNet(image_shape=(3,), backbone="mlp")
    model.f_theta = nn.Identity()
    tasks = [Episode(torch.randn(1, 4, 3), torch.tensor([[0, 0, 1, 1]]), torch.randn(1, 2, 3),
                     torch.tensor([[0, 1]]), 2) for _ in range(2)]
    batched = Episode(torch.cat([t.support for t in tasks]), torch.cat([t.support_labels for t in tasks]),
                      torch.cat([t.query for t in tasks]), torch.cat([t.query_labels for t in tasks]), 2)
    assert torch.allclose(model.predict(batched), torch.cat([model.predict(t) for t in tasks]))


def test_learns_on_the_synthetic_set():
    pl.seed_everything(0)
    data = SyntheticDataModule(n_way=5, k_shot=1, n_query=5, batches_per_epoch=40, val_episodes=50, test_episodes=100,
                               noise=0.8)
    model = ProtoNet(image_shape=data.image_shape)
    trainer = pl.Trainer(max_steps=40, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    before = trainer.test(model, data, verbose=False)[0]["test/acc"]
    trainer.fit(model, data)
    after = trainer.test(model, data, verbose=False)[0]["test/acc"]
    assert before < 40 and after > 60, (before, after)  # chance is 20%
