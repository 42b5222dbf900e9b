"""Train and evaluate: `python train.py [loss=ams] [data=opendata] [key=value ...]`.

Composes the Hydra config and hands it to the library; see conf/train.yaml for every key.
The library (torch, Lightning) is imported inside the task function, so that `--help`,
`--cfg job` and shell completion answer without loading it. A config, data, run folder or
search error ends the command with its one-line message and exit status 1
(`AMSAWARE_DEBUG=1` shows the traceback; see amsaware.cli).
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from amsaware.cli import null_choices, reports_errors


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@reports_errors
def main(cfg: DictConfig) -> float:
    from amsaware.experiment import run_experiment

    return run_experiment(cfg)


if __name__ == "__main__":
    sys.argv[1:] = null_choices(sys.argv[1:], Path(__file__).parent / "conf")  # logger=null
    main()
