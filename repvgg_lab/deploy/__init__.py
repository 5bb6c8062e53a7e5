"""Deploy: load any checkpoint, convert, verify against float64, export, time and report."""

from repvgg_lab.deploy.options import DeployOptions
from repvgg_lab.deploy.run import deploy
from repvgg_lab.deploy.source import Source, load_source
from repvgg_lab.errors import DeployError

__all__ = ["DeployError", "DeployOptions", "Source", "deploy", "load_source"]
