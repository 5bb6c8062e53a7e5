"""Train a re-parameterizable net, convert it at the end, evaluate and record: python train.py"""

from omegaconf import DictConfig

from repvgg_lab.pipeline.cli import TRAIN_CHECKS, run
from repvgg_lab.pipeline.train import train


def main(cfg: DictConfig) -> float:
    """One job; its validation accuracy is what a Hydra sweeper would optimise."""
    return train(cfg).get("val/acc", 0.0)


if __name__ == "__main__":
    run("train", main, TRAIN_CHECKS)
