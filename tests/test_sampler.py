import pytest
import torch

from lightning_meta.data import DataError, EpisodeSampler, EpisodeSchedule
from lightning_meta.data.synthetic import synthetic_store
from lightning_meta.episode import episode_seed


@pytest.fixture(scope="module")
def store():
    return synthetic_store(num_classes=30, items_per_class=12, shape=(1, 8, 8), noise=0.3, num_groups=3, seed=0)


def sampler(store, **kwargs):
    return EpisodeSampler(store, **({"split": "train", "n_way": 5, "k_shot": 2, "n_query": 3, "seed": 0} | kwargs))


def same(a, b):
    fields = ("support", "support_labels", "query", "query_labels")
    return all(torch.equal(getattr(a, f), getattr(b, f)) for f in fields)


def test_same_key_same_episode(store):
    assert same(sampler(store)[17], sampler(store)[17])


def test_other_index_seed_or_split_gives_another_episode(store):
    base = sampler(store)[17]
    assert not same(base, sampler(store)[18])
    assert not same(base, sampler(store, seed=1)[17])
    assert not same(base, sampler(store, split="val")[17])


def test_episode_is_made_of_the_stores_images(store):
    s = sampler(store)
    classes, items = s.indices(5)
    episode = s[5]
    assert len(set(classes.tolist())) == 5  # distinct classes
    for n in range(5):
        assert len(set(items[n].tolist())) == 5  # support and query items disjoint
        for k in range(2):
            assert torch.equal(episode.support[0, n * 2 + k], store.images[classes[n], items[n, k]])
        for q in range(3):
            assert torch.equal(episode.query[0, n * 3 + q], store.images[classes[n], items[n, 2 + q]])
    assert episode.support_labels.tolist() == [[0, 0, 1, 1, 2, 2, 3, 3, 4, 4]]
    assert sorted(set(episode.query_labels[0].tolist())) == [0, 1, 2, 3, 4]


def test_classes_cover_the_split(store):
    s = sampler(store)
    seen = torch.cat([s.indices(i)[0] for i in range(200)])
    assert set(seen.tolist()) == set(range(store.num_classes))


def test_within_group_episodes_stay_in_one_group(store):
    s = sampler(store, within_group=True)
    groups = {int(store.groups[s.indices(i)[0]].unique().numel()) for i in range(100)}
    assert groups == {1}
    assert len({int(store.groups[s.indices(i)[0][0]]) for i in range(100)}) == 3  # all groups get drawn


def test_impossible_shapes_are_rejected(store):
    with pytest.raises(DataError, match="only 30 classes"):
        sampler(store, n_way=31)
    with pytest.raises(DataError, match="only 12 items"):
        sampler(store, k_shot=5, n_query=8)
    with pytest.raises(DataError, match="no group has 11 classes"):
        sampler(store, n_way=11, within_group=True)


def test_ranks_split_one_process_batches_exactly():
    """Two ranks with T tasks per batch draw, batch by batch, what one process with 2T tasks draws."""
    single = list(EpisodeSchedule(num_episodes=48, batch_size=4, trained_batches=lambda: 0))
    ranks = [list(EpisodeSchedule(48, 2, rank=r, world_size=2, trained_batches=lambda: 0)) for r in (0, 1)]
    assert not set(ranks[0]) & set(ranks[1])
    for b in range(12):
        assert sorted(ranks[0][2 * b : 2 * b + 2] + ranks[1][2 * b : 2 * b + 2]) == single[4 * b : 4 * b + 4]


def test_training_schedule_moves_on_and_resumes_mid_epoch():
    done = [0]
    schedule = EpisodeSchedule(num_episodes=20, batch_size=2, trained_batches=lambda: done[0])
    assert list(schedule) == list(range(20))
    done[0] = 10  # the second epoch draws new episodes
    assert list(schedule) == list(range(20, 40))
    done[0] = 13  # resumed three batches into the second epoch: the rest of that epoch
    assert list(schedule) == list(range(26, 40))
    assert len(schedule) == 20


def test_evaluation_schedule_is_fixed():
    schedule = EpisodeSchedule(num_episodes=7, batch_size=3, rank=1, world_size=2)
    assert list(schedule) == [1, 3, 5] == list(schedule)


def test_transform_is_reproducible_per_episode(store):
    def noise(image):
        return (image.int() + torch.randint(0, 3, image.shape)).clamp(0, 255).to(torch.uint8)

    a, b = sampler(store, transform=noise), sampler(store, transform=noise)
    torch.manual_seed(1)
    first = a[3]
    torch.manual_seed(2)
    assert same(first, b[3])
    # the value: the transform applied to the episode's images in turn (class by class, support then queries),
    # under the global RNG seeded with the episode's transform key
    plain = sampler(store)[3]
    images = torch.cat([plain.support[0].unflatten(0, (5, 2)), plain.query[0].unflatten(0, (5, 3))], dim=1)
    torch.manual_seed(episode_seed(0, "train/transform", 3))
    expected = torch.stack([noise(image) for image in images.flatten(0, 1)]).unflatten(0, (5, 5))
    assert torch.equal(first.support[0], expected[:, :2].flatten(0, 1))
    assert torch.equal(first.query[0], expected[:, 2:].flatten(0, 1))
    assert not torch.equal(first.support, plain.support)  # the noise did change some pixels


def class_of_each_label(store, episode, k_shot):
    """The store class whose images label n's support examples are, for n = 0 .. N-1, found by comparing pixels
    (independent of ``EpisodeSampler.indices``)."""
    flat = store.images.flatten(2)  # [classes, items, pixels]
    found = []
    for image in episode.support[0, ::k_shot]:  # the first support example of each label
        matches = (flat == image.flatten()).all(-1).any(-1).nonzero().flatten().tolist()
        assert len(matches) == 1
        found.append(matches[0])
    return found


@pytest.mark.parametrize("within_group", [False, True])
def test_labels_are_a_fresh_random_permutation_of_the_episodes_classes(store, within_group):
    """Label n is not the n-th of the episode's classes in any fixed order of the store: over 300 episodes the rank
    of label 0's class among its episode's 5 classes (by store index) takes each of the 5 values about equally often
    (60 expected, each at least 35: a sorted or any fixed order puts it at one rank every time), and every class
    is given every one of the 5 labels in some episode."""
    s = sampler(store, within_group=within_group)
    rank_counts = [0] * 5
    labels_of = {c: set() for c in range(store.num_classes)}
    for i in range(300):
        classes = class_of_each_label(store, s[i], k_shot=2)
        assert len(set(classes)) == 5
        rank_counts[sorted(classes).index(classes[0])] += 1
        for label, c in enumerate(classes):
            labels_of[c].add(label)
    assert min(rank_counts) >= 35, rank_counts
    assert all(labels == set(range(5)) for labels in labels_of.values()), labels_of  # each class drawn ~50 times
