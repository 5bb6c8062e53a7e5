"""Lightning glue: the classifier module, the re-parameterize callback, schedules."""

from repvgg_lab.lit.callbacks import Reparameterize
from repvgg_lab.lit.ema import EMA
from repvgg_lab.lit.module import ClassifierModule

__all__ = ["EMA", "ClassifierModule", "Reparameterize"]
