"""python deploy.py ckpt=PATH [model=NAME] [out_dir=DIR] [input_size=224] [tolerance=...]"""

import hydra
from omegaconf import DictConfig

from repvgg_lab.pipeline.deploy import deploy


# Its own config folder: in configs/ the `model` training group would claim `model=NAME`.
@hydra.main(version_base="1.3", config_path="configs/deploy", config_name="deploy")
def main(cfg: DictConfig) -> None:
    deploy(cfg)


if __name__ == "__main__":
    main()
