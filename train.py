"""Train and evaluate: `python train.py [loss=ams] [data=opendata] [key=value ...]`.

Composes the Hydra config and hands it to the library; see conf/train.yaml for every key.
The library (torch, Lightning) is imported inside the task function, so that `--help`,
`--cfg job` and shell completion answer without loading it.
"""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    from amsaware.experiment import run_experiment

    return run_experiment(cfg)


if __name__ == "__main__":
    main()
