"""Training throughput of Prototypical Networks on Omniglot, three ways, in one process on the same machine:

- through train.py's Lightning path (``lightning_meta.cli.main`` with a step-timing callback; the first ``warmup``
  steps are not timed),
- through a plain PyTorch loop over the same model, optimiser, schedule and episode tensors,
- episode sampling alone (sampler, collation and uint8-to-float conversion, as the DataLoader runs them).

The Lightning and plain measurements alternate ``repeats`` times and the medians are reported, so drift in
the machine's speed hits both alike.

    python benchmarks/throughput.py            # 5-way 1-shot (15 queries) and 60-way 1-shot (5 queries)

Run it on an otherwise idle machine: figures from a shared CPU are not comparable.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import timing
import torch
from results import ROOT, hardware, record, this_command, today

sys.path.insert(0, str(ROOT))
from lightning_meta import OmniglotDataModule, ProtoNet, cli  # noqa: E402
from lightning_meta.episode import collate_episodes  # noqa: E402

SHAPES = {"5w1s": (5, 1, 15, 300), "60w1s": (60, 1, 5, 100)}  # ways, shots, queries, timed steps


def train_py_args(ways: int, shots: int, queries: int, steps: int, warmup: int) -> list[str]:
    return timing.timed_run_args("proto.yaml", steps, warmup, 10, "/tmp/lightning_meta_throughput") + [
        "--data.n_way", str(ways), "--data.k_shot", str(shots), "--data.n_query", str(queries)]


def plain_loop_rate(data: OmniglotDataModule, episodes: list, warmup: int) -> float:
    torch.manual_seed(0)
    model = ProtoNet(image_shape=data.image_shape, lr=1e-3, lr_decay_every=2000)
    configured = model.configure_optimizers()
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    for i, episode in enumerate(episodes):
        if i == warmup:
            start = time.perf_counter()
        loss, _ = model.meta_loss(episode)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    return (len(episodes) - warmup) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    args = parser.parse_args()
    for name in args.shapes:
        ways, shots, queries, steps = SHAPES[name]
        data = OmniglotDataModule(n_way=ways, k_shot=shots, n_query=queries)
        data.setup("fit")
        sampler = data.samplers["train"]
        start = time.perf_counter()
        episodes = [data.on_after_batch_transfer(collate_episodes([sampler[i]]), 0) for i in range(args.warmup + steps)]
        sampling = len(episodes) / (time.perf_counter() - start)

        lightning_args = train_py_args(ways, shots, queries, steps, args.warmup)
        plain_rates = []
        for _ in range(args.repeats):
            cli.main(lightning_args)
            plain_rates.append(plain_loop_rate(data, episodes, args.warmup))
        lightning, plain = statistics.median(timing.RATES[-args.repeats:]), statistics.median(plain_rates)

        record({
            "kind": "throughput", "algorithm": "protonet", "dataset": "omniglot", "split": "vinyals", "ways": ways,
            "shots": shots, "within_alphabet": False, "queries": queries,
            "episodes_per_second": {"Lightning (train.py)": lightning, "plain PyTorch loop": plain,
                                    "episode sampling alone": sampling},
            "lightning_vs_plain": lightning / plain, "sampling_vs_training": sampling / plain,
            "hardware": hardware(), "date": today(), "command": this_command(),
            "note": f"Medians of {args.repeats} alternating runs of {steps} timed steps each. Lightning / plain = "
                    f"{lightning / plain:.3f}; sampling is {sampling / plain:.0f}x faster than training consumes "
                    f"episodes. Lightning path: `python train.py {' '.join(lightning_args)}`.",
        })  # fmt: skip
        print(f"{name}: Lightning {lightning:.2f} eps/s, plain {plain:.2f} eps/s ({lightning / plain:.3f}), "
              f"sampling {sampling:.0f} eps/s ({sampling / plain:.0f}x)")


if __name__ == "__main__":
    os.environ.setdefault("LIGHTNING_META_DATA", str(ROOT.parent / "shared" / "data"))
    main()
