"""Compare finished runs: `python compare.py runs='[RUN_A,RUN_B]'` (the first is the reference).

Paired bootstrap of AMS and ROC AUC differences plus figures, written into the compare run
folder (logs/compare/runs/<time>/); see conf/compare.yaml for every key.
"""

import hydra
from omegaconf import DictConfig

from amsaware.cli import reports_errors
from amsaware.comparison import run_comparison


@hydra.main(version_base="1.3", config_path="conf", config_name="compare")
@reports_errors
def main(cfg: DictConfig) -> None:
    run_comparison(cfg)


if __name__ == "__main__":
    main()
