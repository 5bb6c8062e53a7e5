"""python deploy.py ckpt=PATH [model=NAME] [out_dir=DIR] [input_size=224] [tolerance=...]"""

from repvgg_lab.pipeline.cli import DEPLOY_CHECKS, run
from repvgg_lab.pipeline.deploy import deploy

# Its own config folder (configs/deploy/): in configs/ the `model` training group would claim
# `model=NAME`.
if __name__ == "__main__":
    run("deploy", deploy, DEPLOY_CHECKS)
