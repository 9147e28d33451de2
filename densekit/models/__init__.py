"""Trained models as plain ``nn.Module``s: :class:`DenseModel` (normalisation, frozen backbone,
head, pixel detail, outputs), its options (:class:`ModelConfig`), what it takes
(:class:`InputSpec`) and what it outputs (:class:`OutputSpec`), and its checkpoints."""

from densekit.models.config import ModelConfig
from densekit.models.dense import DenseModel
from densekit.models.inputs import InputSpec
from densekit.models.outputs import OutputSpec

__all__ = ["DenseModel", "InputSpec", "ModelConfig", "OutputSpec"]
