"""Self-supervised DINO pretraining on unlabelled imagery (``densekit pretrain``)."""

from densekit.pretrain.data import PretrainDataModule
from densekit.pretrain.dino import DinoPretrainTask

__all__ = ["DinoPretrainTask", "PretrainDataModule"]
