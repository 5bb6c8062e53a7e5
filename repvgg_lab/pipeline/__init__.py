"""Entry-point logic behind train.py and deploy.py: the only package that touches Hydra."""
