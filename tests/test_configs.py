"""Every shipped config builds: its keys and types parse, its model and data module construct and pass the
checks ``train.py`` runs before training."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from lightning_meta import ConfigError, EpisodicDataModule, MetaLearner  # noqa: E402
from lightning_meta.cli import MetaCLI  # noqa: E402


class Built(Exception):
    pass


class BuildOnly(MetaCLI):
    """Stops where train.py would create the trainer: after the model and the data module are built."""

    def instantiate_trainer(self, **kwargs):
        trainer = self.config_init["trainer"]
        self.model.validate_setup(self.datamodule, trainer.get("inference_mode", True), trainer.get("max_steps", -1))
        raise Built


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_shipped_config_builds(config):
    with pytest.raises(Built):
        BuildOnly(MetaLearner, EpisodicDataModule, subclass_mode_model=True, subclass_mode_data=True,
                  args=["--config", str(ROOT / "configs" / config)], run=False, parser_kwargs={"exit_on_error": False})


@pytest.mark.parametrize("algorithm, backbone, message", [
    ("MatchingNetwork", "conv4_maps", "need embedding vectors"),
    ("Siamese", "conv4_maps", "compares embedding vectors"),
    ("RelationNetwork", "conv4", "compares feature maps"),
])  # fmt: skip
def test_a_backbone_of_the_wrong_kind_is_refused(algorithm, backbone, message):
    import lightning_meta

    with pytest.raises(ConfigError, match=message):
        getattr(lightning_meta, algorithm)((1, 28, 28), backbone=backbone)
