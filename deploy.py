"""python deploy.py ckpt=PATH [model=NAME] [out_dir=DIR] [input_size=224] [tolerance=...]"""

import hydra
from omegaconf import DictConfig

from repvgg_lab.pipeline.deploy import deploy


@hydra.main(version_base="1.3", config_path="configs", config_name="deploy")
def main(cfg: DictConfig) -> None:
    deploy(cfg)


if __name__ == "__main__":
    main()
