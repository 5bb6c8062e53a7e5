"""Deploy: load any checkpoint, convert, verify against float64, export, time and report."""

from repvgg_lab.deploy.errors import DeployError
from repvgg_lab.deploy.latency import measure_latency, paired_ratio
from repvgg_lab.deploy.run import deploy
from repvgg_lab.deploy.source import Source, load_source

__all__ = ["DeployError", "Source", "deploy", "load_source", "measure_latency", "paired_ratio"]
