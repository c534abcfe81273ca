"""What MAML and Reptile share: evaluation adapts a copy and leaves the meta-parameters alone."""

import pytest
import torch

from lightning_meta import MAML, Reptile, SyntheticDataModule


@pytest.mark.parametrize("build", [
    lambda shape: MAML(shape, n_way=5, hidden=16, eval_inner_steps=3),
    lambda shape: Reptile(shape, n_way=5, hidden=16, eval_inner_steps=5, eval_inner_batch=4),
], ids=["maml", "reptile"])  # fmt: skip
def test_evaluation_leaves_the_meta_parameters_alone_and_repeats_exactly(build, trainer):
    data = SyntheticDataModule(n_way=5, k_shot=2, n_query=3, test_episodes=10, eval_tasks_per_batch=5)
    model = build(data.image_shape)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = trainer().test(model, data, verbose=False)[0]
    second = trainer().test(model, data, verbose=False)[0]
    assert first == second
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
