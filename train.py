"""Train a re-parameterizable net, convert it at the end, evaluate and record: python train.py"""

import hydra
from omegaconf import DictConfig

from repvgg_lab.pipeline.train import train


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float:
    metrics = train(cfg)
    return metrics.get("val/acc", 0.0)


if __name__ == "__main__":
    main()
