"""Few-shot prediction on your own images: a trained checkpoint, a support set of labelled images, and query images.

    python train.py predict --ckpt_path best.ckpt --support my_task/support --query my_task/query
    python train.py predict --ckpt_path best.ckpt --support DIR --query a.png b.png --output out.csv --picture out.png

The support folder holds one sub-folder per class, named after the class, with that class's images (any number,
at least one). A query is an image file or a folder of them. From Python, :func:`classify` does the same.

Each image gets the preprocessing the model was trained with, which the data module stored in the checkpoint
(``EpisodicDataModule.preprocessing``): decoded to the trained channels and square size (Lanczos filtering), turned
into floats in [0, 1] and normalised by the trained mean and std. A model trained on Omniglot saw bright strokes on
black (the data set's drawings, inverted); an image whose background is light (its median pixel above mid-grey) is
inverted too, so that a dark drawing on white paper reads as the model expects.

The support and query images form one episode, scored by the algorithm's own evaluation (``MetaLearner.evaluate``,
what the closing test of a run measures): metric learners compare, MAML and its kin adapt on the support set first,
Meta Networks make fast weights from it, MANN reads it as a labelled sequence before each query. The class scores
become probabilities through the algorithm's ``probabilities``; for the Relation and the Siamese network
(``calibrated`` False) they are normalised scores rather than probabilities.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms.v2.functional import to_pil_image

from lightning_meta.algorithms import ALGORITHMS, MetaLearner
from lightning_meta.checkpoint import algorithm_of, load_checkpoint
from lightning_meta.data.datamodule import normalise
from lightning_meta.data.folder import IMAGE_SUFFIXES, visible
from lightning_meta.data.store import decode_image, image_array
from lightning_meta.episode import Episode
from lightning_meta.errors import ConfigError, DataError
from lightning_meta.pictures import episode_image

ImageLike = str | Path | Image.Image
QUERIES_SHOWN = 20  # queries per class in the picture of a prediction


@dataclass
class Prediction:
    """What :func:`classify` returns: for every query, a probability of every class."""

    classes: list[str]  # [N] the class names, sorted
    probabilities: Tensor  # [Q, N] each row sums to 1 (normalised scores where ``calibrated`` is False)
    scores: Tensor  # [Q, N] the algorithm's own class scores, higher is more likely
    calibrated: bool  # False: ``probabilities`` are normalised scores (Relation and Siamese networks)

    @property
    def predicted(self) -> list[str]:
        """The most likely class of each query."""
        return [self.classes[i] for i in self.probabilities.argmax(-1).tolist()]


def stored_preprocessing(checkpoint: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """The preprocessing the data module saved in ``checkpoint`` (``EpisodicDataModule.state_dict``)."""
    for value in checkpoint.values():
        if isinstance(value, dict) and isinstance(value.get("preprocessing"), dict):
            return value["preprocessing"]
    raise ConfigError(f"checkpoint {path} holds no preprocessing record (it was written before prediction existed); "
                      f"resume its run for a step with --ckpt_path to write a new one, or retrain")


def load_model(path: str | Path, inference: str | None = None) -> tuple[MetaLearner, dict[str, Any]]:
    """The model saved in checkpoint ``path``, in evaluation mode on the CPU, and its stored preprocessing; a
    checkpoint that cannot classify images is one ConfigError. ``inference`` replaces the model's evaluation rule
    (``model.inference`` of the embedding learners: ``none``, ``bd_cspn`` or ``tim``)."""
    checkpoint = load_checkpoint(path)
    name = algorithm_of(checkpoint)
    if name not in ALGORITHMS:
        raise ConfigError(f"checkpoint {path} was not written by a lightning_meta algorithm ({name or 'no record'}); "
                          f"pass a checkpoint of a train.py run")
    preprocessing = stored_preprocessing(checkpoint, path)
    hparams = {k: v for k, v in checkpoint.get("hyper_parameters", {}).items() if not k.startswith("_")}
    if preprocessing.get("task") != "classification" or hparams.get("n_way", 2) == 0:
        raise ConfigError(f"checkpoint {path} is a {name} regression model (it predicts values, e.g. of sinusoids); "
                          f"prediction classifies images: pass a checkpoint trained on classification episodes")
    if preprocessing.get("eval_transform") is not None:
        raise ConfigError(f"checkpoint {path} was evaluated with data.eval_transform {preprocessing['eval_transform']},"
                          f" which a checkpoint cannot store; classify its images through a data module instead")
    if inference is not None:
        if not getattr(ALGORITHMS[name], "transductive_inference", False):
            raise ConfigError(f"--inference {inference}: checkpoint {path} is a {name} model, which does not classify "
                              f"by embedding vectors; leave --inference out")
        hparams["inference"] = inference
    if hparams.get("pretrained"):
        hparams["pretrained"] = False  # the checkpoint holds the weights: nothing to download or read again
    model = ALGORITHMS[name](**hparams)
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval(), preprocessing


def plain_preprocessing(model: MetaLearner) -> dict[str, Any]:
    """The preprocessing of a data module without normalisation or inversion, at the model's input shape."""
    shape = list(model.hparams.image_shape)
    return {"task": "classification", "image_shape": shape, "bright_on_dark": False, "mean": None, "std": None,
            "eval_transform": None}


def read_image(image: ImageLike, preprocessing: dict[str, Any]) -> Tensor:
    """One image as the model's training data had it: uint8 [C, S, S] (see the module docstring)."""
    shape = preprocessing["image_shape"]
    if len(shape) != 3 or shape[1] != shape[2]:
        raise ConfigError(f"the model takes inputs of shape {tuple(shape)}, not square images; it cannot classify "
                          f"image files")
    channels, size = shape[0], shape[1]
    if isinstance(image, Image.Image):
        array = image_array(image, size, channels)
    else:
        path = Path(image)
        if not path.is_file():
            raise DataError(f"image {path} does not exist; check the path")
        array = decode_image(path.read_bytes(), size, channels, str(path))
    if preprocessing["bright_on_dark"] and np.median(array) > 127:  # a light background: dark strokes on white
        array = 255 - array
    return torch.from_numpy(np.ascontiguousarray(array))


def to_input(images: Tensor, preprocessing: dict[str, Any]) -> Tensor:
    """uint8 images [B, C, S, S] to the model's float inputs, as the data module makes them (``normalise``)."""
    mean, std = (None if preprocessing[k] is None else torch.tensor(preprocessing[k]).view(-1, 1, 1)
                 for k in ("mean", "std"))
    return normalise(images, mean, std)


@dataclass
class Task:
    """A few-shot task read from image files: uint8 images as the model's training data had them."""

    classes: list[str]  # [N] class names, sorted
    support: Tensor  # [NK, C, S, S] uint8
    support_labels: Tensor  # [NK] indices into classes
    query: Tensor  # [NQ, C, S, S] uint8


def read_task(model: MetaLearner, preprocessing: dict[str, Any], support_images: Sequence[ImageLike],
              support_labels: Sequence[str], query_images: Sequence[ImageLike]) -> Task:
    """Checks that ``model`` can take the task, then reads its images; bad input is one ConfigError."""
    if len(support_images) != len(support_labels):
        raise ConfigError(f"{len(support_images)} support images but {len(support_labels)} labels; give one label "
                          f"per image")
    if not query_images:
        raise ConfigError("no query images; give at least one image to classify")
    names = [str(label) for label in support_labels]
    classes = sorted(set(names))
    model.check_task([names.count(c) for c in classes])
    support = torch.stack([read_image(image, preprocessing) for image in support_images])
    query = torch.stack([read_image(image, preprocessing) for image in query_images])
    return Task(classes, support, torch.tensor([classes.index(n) for n in names]), query)


def predict_task(model: MetaLearner, task: Task, preprocessing: dict[str, Any]) -> Prediction:
    """The model's class probabilities for the task's queries."""
    episode = Episode(support=to_input(task.support, preprocessing)[None], support_labels=task.support_labels[None],
                      query=to_input(task.query, preprocessing)[None],
                      query_labels=torch.zeros(1, len(task.query), dtype=torch.long),  # unknown, never read
                      n_way=len(task.classes))
    model.eval()
    with torch.no_grad():  # as in the test loop; the learners that adapt take their gradients with torch.func
        scores = model.evaluate(episode)[0].float()  # [NQ, N]
    return Prediction(task.classes, model.probabilities(scores), scores, model.calibrated)


def classify(
    model: str | Path | MetaLearner,
    support_images: Sequence[ImageLike],
    support_labels: Sequence[str],
    query_images: Sequence[ImageLike],
    preprocessing: dict[str, Any] | None = None,
) -> Prediction:
    """Classifies ``query_images`` among the classes of a labelled support set.

    Args:
        model: a checkpoint path (the model and its preprocessing are read from it) or a MetaLearner.
        support_images: image file paths or PIL images.
        support_labels: the class name of each support image; the classes are sorted by name.
        query_images: the images to classify.
        preprocessing: how the model's training images were prepared (a data module's ``preprocessing()``);
            default: the checkpoint's, or, for a model object, no normalisation or inversion.
    Returns:
        a :class:`Prediction`: class names, probabilities [Q, N] and scores [Q, N].
    """
    if isinstance(model, MetaLearner):
        preprocessing = preprocessing or plain_preprocessing(model)
    else:
        model, stored = load_model(model)
        preprocessing = preprocessing or stored
    task = read_task(model, preprocessing, support_images, support_labels, query_images)
    return predict_task(model, task, preprocessing)


def image_paths(folder: Path) -> list[Path]:
    """The image files in ``folder`` and below, sorted; hidden files and folders are skipped."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and visible(PurePosixPath(p.relative_to(folder).as_posix())))


def support_folder(folder: Path) -> tuple[list[Path], list[str]]:
    """The images of a support folder (one sub-folder per class, named after it) and their class names."""
    if not folder.is_dir():
        raise DataError(f"support folder {folder} does not exist; give a folder with one sub-folder of images per "
                        f"class")
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and visible(PurePosixPath(p.name)))
    if not classes:
        raise DataError(f"support folder {folder} has no class folders; put each class's images in a sub-folder "
                        f"named after the class")
    images, labels = [], []
    for class_folder in classes:
        found = image_paths(class_folder)
        if not found:
            raise DataError(f"class folder {class_folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); add "
                            f"its images or remove the folder")
        images += found
        labels += [class_folder.name] * len(found)
    return images, labels


def query_files(paths: Sequence[str | Path]) -> list[Path]:
    """The query images: each path an image file or a folder of them."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = image_paths(path)
            if not found:
                raise DataError(f"query folder {path} holds no images; give image files or a folder of them")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"query {path} does not exist; give image files or a folder of them")
    return files


def check_new_file(path: Path | None, suffixes: tuple[str, ...], option: str) -> None:
    """An output file must be new (nothing the user has is overwritten), in an existing folder, of a known kind."""
    if path is None:
        return
    if path.suffix.lower() not in suffixes:
        raise ConfigError(f"{option} {path}: the file name must end in {' or '.join(suffixes)}")
    if path.exists():
        raise ConfigError(f"{option} {path} exists already; choose a new file name (nothing is overwritten)")
    if not path.parent.is_dir():
        raise ConfigError(f"{option} {path}: folder {path.parent} does not exist; create it or choose another")


def write_table(path: Path, queries: list[Path], prediction: Prediction, checkpoint: str, algorithm: str) -> None:
    """The prediction of every query as CSV (a row per query) or JSON, by the file's suffix."""
    kind = "probability" if prediction.calibrated else "score"
    rows = [{"query": str(q), "predicted": c, kind: round(float(p.max()), 6),
             **{f"{kind}:{name}": round(float(v), 6) for name, v in zip(prediction.classes, p)}}
            for q, c, p in zip(queries, prediction.predicted, prediction.probabilities)]
    if path.suffix.lower() == ".json":
        with open(path, "x") as file:
            json.dump({"checkpoint": checkpoint, "algorithm": algorithm, "classes": prediction.classes, "kind": kind,
                       "queries": rows}, file, indent=1)
        return
    with open(path, "x", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def picture(task: Task, prediction: Prediction) -> Image.Image:
    """The task as the TensorBoard picture of a test episode draws it: a row per class, named, with its support
    images, then the queries assigned to that class (at most ``QUERIES_SHOWN``), each with its probability."""
    predicted = prediction.probabilities.argmax(-1)
    episode = Episode(task.support[None], task.support_labels[None], task.query[None], predicted[None],
                      len(task.classes))
    captions = [f"{float(p):.2f}" for p in prediction.probabilities.max(-1).values]
    grid = episode_image(episode, predicted[None], queries_shown=QUERIES_SHOWN, class_names=task.classes,
                         query_captions=captions)
    return to_pil_image(grid)


def main(args: Sequence[str] | None = None) -> int:
    """``train.py predict``: the command line of the module docstring; bad input is one line and exit code 2."""
    parser = argparse.ArgumentParser(prog="train.py predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt_path", required=True, help="a checkpoint of a train.py run (e.g. its best-*.ckpt)")
    parser.add_argument("--support", required=True, help="folder with one sub-folder of images per class")
    parser.add_argument("--query", required=True, nargs="+", help="image files, or folders of them, to classify")
    parser.add_argument("--output", type=Path, help="also write the predictions to this new .csv or .json file")
    parser.add_argument("--picture", type=Path, help="also draw the task and its predictions to this new .png file")
    parser.add_argument("--inference", choices=["none", "bd_cspn", "tim"],
                        help="classify the queries together, transductively (embedding learners; default: as trained)")
    options = parser.parse_args(args)
    try:
        check_new_file(options.output, (".csv", ".json"), "--output")
        check_new_file(options.picture, (".png",), "--picture")
        support, labels = support_folder(Path(options.support))
        queries = query_files(options.query)
        model, preprocessing = load_model(options.ckpt_path, options.inference)
        task = read_task(model, preprocessing, support, labels, queries)
    except ConfigError as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    prediction = predict_task(model, task, preprocessing)
    kind = "probability" if prediction.calibrated else "score"
    width = max(len(str(q)) for q in queries)
    for q, c, p in zip(queries, prediction.predicted, prediction.probabilities):
        print(f"{str(q):<{width}}  {c}  ({kind} {float(p.max()):.3f})")
    if options.output is not None:
        write_table(options.output, queries, prediction, options.ckpt_path, model.name)
    if options.picture is not None:
        picture(task, prediction).save(options.picture)
    return 0
