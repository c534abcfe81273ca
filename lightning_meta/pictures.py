"""TensorBoard pictures of a run's closing test, where a picture says more than a number.

``TestPictures`` (train.py adds it to every run it logs) writes, from the first test batch and at the end of the
test:

- ``test/episode``: the first test episode as an image, one row per class: its support images, then its queries,
  each framed green where the model chose the right class and red where it did not, with the chosen class below;
- ``test/embeddings`` (the metric-based algorithms, ``EmbeddingPictures``): that episode's support and query
  embeddings and the mean support embedding of every class (the prototypes), for TensorBoard's projector;
- ``test/acc_by_inner_step`` (MAML, first-order MAML and Reptile, ``InnerStepPictures``): query accuracy on the first
  test batch after 0, 1, ..., k inner steps, plotted against the step;
- ``test/acc_by_instance`` (MANN, ``InstancePictures``): accuracy on the n-th instance of a class, plotted against n;
- the model's hyper-parameters with the final test metrics (TensorBoard's HPARAMS tab).
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from pytorch_lightning.loggers import TensorBoardLogger
from torch import Tensor
from torchvision.transforms.v2.functional import pil_to_tensor, to_pil_image

from lightning_meta.algorithms.base import EmbeddingPictures, InnerStepPictures, InstancePictures
from lightning_meta.episode import Episode

QUERIES_SHOWN = 5  # queries per class in the episode image
FRAME, CAPTION = 3, 12  # pixels around each image, and below each query for its predicted class
GREEN, RED, GREY = (40, 170, 60), (220, 40, 40), (128, 128, 128)


def displayable(images: Tensor) -> Tensor:
    """Images [B, C, H, W] of any range (normalised floats) -> uint8 RGB [B, 3, H, W], each stretched to 0-255."""
    x = images.detach().float().cpu()
    low, high = x.amin((1, 2, 3), keepdim=True), x.amax((1, 2, 3), keepdim=True)
    x = ((x - low) / (high - low).clamp_min(1e-8) * 255).round().to(torch.uint8)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x[:, :3]


def episode_image(episode: Episode, predicted: Tensor, task: int = 0, queries_shown: int = QUERIES_SHOWN,
                  class_names: list[str] | None = None, query_captions: list[str] | None = None) -> Tensor:
    """Task ``task`` of an image episode as one uint8 RGB image [3, H, W]: row n holds the support images of
    class n and then up to ``queries_shown`` of its queries, framed green (predicted class n) or red (another
    class, written below the query). ``predicted`` [T, NQ] are the chosen classes. ``class_names`` are written
    in a column left of the rows, and ``query_captions`` (one per query) below the queries instead of the class."""
    support, query = displayable(episode.support[task]), displayable(episode.query[task])
    support_labels, query_labels = episode.support_labels[task].cpu(), episode.query_labels[task].cpu()
    predicted = predicted[task].cpu()
    n_way, (h, w) = episode.n_way, support.shape[-2:]
    shots = [torch.nonzero(support_labels == n).flatten() for n in range(n_way)]
    queries = [torch.nonzero(query_labels == n).flatten()[:queries_shown] for n in range(n_way)]
    cell_w, cell_h = w + 2 * FRAME, h + 2 * FRAME + CAPTION
    gap = cell_w // 2  # between the support images and the queries of a row
    K, Q = max(len(s) for s in shots), max(len(q) for q in queries)
    font = ImageFont.load_default()  # ImageDraw's own
    margin = 0 if class_names is None else int(max(font.getlength(name) for name in class_names)) + 2 * FRAME
    canvas = Image.new("RGB", (margin + (K + Q) * cell_w + gap, n_way * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for n in range(n_way):
        top = n * cell_h
        if class_names is not None:
            draw.text((FRAME, top + h // 2), class_names[n], fill=(0, 0, 0))
        for k, i in enumerate(shots[n].tolist()):
            left = margin + k * cell_w
            draw.rectangle([left, top, left + cell_w - 1, top + h + 2 * FRAME - 1], fill=GREY)
            canvas.paste(to_pil_image(support[i]), (left + FRAME, top + FRAME))
        for j, i in enumerate(queries[n].tolist()):
            left, right = margin + K * cell_w + gap + j * cell_w, int(predicted[i]) == n
            caption = str(int(predicted[i])) if query_captions is None else query_captions[i]
            draw.rectangle([left, top, left + cell_w - 1, top + h + 2 * FRAME - 1], fill=GREEN if right else RED)
            canvas.paste(to_pil_image(query[i]), (left + FRAME, top + FRAME))
            draw.text((left + FRAME, top + h + 2 * FRAME), caption, fill=GREEN if right else RED)
    return pil_to_tensor(canvas)


def inner_step_points(total: int) -> list[int]:
    """0, 1, 2, 4, ... and ``total``: the inner steps at which the accuracy curve is measured."""
    return sorted({0, total, *(2**i for i in range(total.bit_length()) if 2**i < total)})


class TestPictures(pl.Callback):
    """Writes the pictures of the module docstring to the run's TensorBoard logger (nothing without one). Rank 0 keeps
    the first test batch and its predictions, and draws the pictures when the test has ended (so that a timed test
    does not include them), with the model as it scored that batch."""

    def __init__(self) -> None:
        self.first: tuple[Episode, Any] | None = None

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.first = None

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Episode,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch_idx == 0 and trainer.is_global_zero and batch.n_way:
            self.first = batch, outputs.detach() if isinstance(outputs, Tensor) else None

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        logger = next((logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)), None)
        if logger is None or not trainer.is_global_zero:
            return
        writer, step = logger.experiment, trainer.global_step
        if self.first is not None:
            batch, predictions = self.first
            if isinstance(predictions, Tensor) and batch.support.dim() == 5:  # image episodes [T, NK, C, H, W]
                writer.add_image("test/episode", episode_image(batch, predictions.argmax(-1)), step)
            with trainer.precision_plugin.test_step_context():  # as the test step ran (autocast under mixed precision)
                if isinstance(pl_module, EmbeddingPictures):
                    writer.add_embedding(**embeddings(pl_module, batch.tasks()[0]), tag="test/embeddings",
                                         global_step=step)
                if isinstance(pl_module, InnerStepPictures):
                    with torch.enable_grad():
                        for steps in inner_step_points(pl_module.eval_steps):
                            acc = pl_module.score(pl_module.predict_after(batch, steps), batch).mean()
                            writer.add_scalar("test/acc_by_inner_step", float(acc), steps)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        if isinstance(pl_module, InstancePictures):
            for n in pl_module.instances:
                if f"test/acc_instance_{n}" in metrics:
                    writer.add_scalar("test/acc_by_instance", metrics[f"test/acc_instance_{n}"], n)
        logger.log_hyperparams(pl_module.hparams, {f"hparam/{k}": v for k, v in metrics.items()})
        writer.flush()
        self.first = None


def embeddings(pl_module: pl.LightningModule, task: Episode) -> dict[str, Any]:
    """``add_embedding`` arguments for one task: its support and query embeddings and the class means of the
    support embeddings (prototypes), labelled by kind and class, with the images as sprites."""
    with torch.no_grad():
        z_support, z_query = (z[0].flatten(1).float() for z in pl_module.test_embeddings(task))  # [NK, D], [NQ, D]
    y = F.one_hot(task.support_labels[0], task.n_way).to(z_support.dtype)  # [NK, N]
    prototypes = y.T @ z_support / y.sum(0)[:, None]  # [N, D]
    classes = [*task.support_labels[0].tolist(), *range(task.n_way), *task.query_labels[0].tolist()]
    kinds = ["support"] * len(z_support) + ["prototype"] * task.n_way + ["query"] * len(z_query)
    images = None
    if task.support.dim() == 5:
        blank = torch.zeros(task.n_way, 3, *task.support.shape[-2:], dtype=torch.uint8)
        images = torch.cat([displayable(task.support[0]), blank, displayable(task.query[0])]).float() / 255
    return {"mat": torch.cat([z_support, prototypes, z_query]).cpu(), "label_img": images,
            "metadata": [[kind, str(c)] for kind, c in zip(kinds, classes)], "metadata_header": ["kind", "class"]}
