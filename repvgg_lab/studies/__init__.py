"""Studies behind the docs: drift, the gamma sweep, pruning and RMNet cost."""
