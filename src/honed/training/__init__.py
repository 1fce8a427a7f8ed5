"""Fine-tuning: the training loop, its ``TrainingArgs`` schema and callbacks."""

from honed.training.args import TrainingArgs

__all__ = ["TrainingArgs"]
