import torch

from lightning_meta import SyntheticDataModule


def batches(data: SyntheticDataModule, subset: str) -> list:
    data.setup("fit" if subset == "train" else "test")
    loader = {"train": data.train_dataloader, "val": data.val_dataloader, "test": data.test_dataloader}[subset]()
    return [data.on_after_batch_transfer(b, 0) for b in loader]


def test_task_batches_have_the_episode_shape():
    data = SyntheticDataModule(n_way=4, k_shot=2, n_query=3, tasks_per_batch=5, batches_per_epoch=2,
                               eval_n_way=3, eval_k_shot=1, eval_n_query=2, eval_tasks_per_batch=7, test_episodes=10)
    train = batches(data, "train")
    assert len(train) == 2
    assert train[0].support.shape == (5, 8, 1, 28, 28) and train[0].query.shape == (5, 12, 1, 28, 28)
    assert train[0].support.dtype == torch.float32 and 0 <= train[0].support.min() <= train[0].support.max() <= 1
    test = batches(data, "test")
    assert [b.support.shape[0] for b in test] == [7, 3]  # 10 fixed episodes
    assert test[0].support_labels.shape == (7, 3) and test[0].n_way == 3


def test_worker_processes_draw_the_same_episodes():
    kwargs = dict(n_way=5, k_shot=1, n_query=2, tasks_per_batch=2, batches_per_epoch=6)
    alone = batches(SyntheticDataModule(**kwargs), "train")
    workers = batches(SyntheticDataModule(num_workers=2, **kwargs), "train")
    assert all(torch.equal(a.query, b.query) and torch.equal(a.support, b.support) for a, b in zip(alone, workers))


def test_normalisation_by_hand():
    data = SyntheticDataModule(shape=(2, 4, 4), mean=(0.5, 0.25), std=(0.5, 0.25))
    images = torch.tensor([0, 255], dtype=torch.uint8).view(1, 2, 1, 1).expand(1, 2, 4, 4)
    x = data.to_float(images)
    assert torch.allclose(x[0, 0], torch.full((4, 4), -1.0)) and torch.allclose(x[0, 1], torch.full((4, 4), 3.0))
