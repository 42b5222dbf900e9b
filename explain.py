"""Explain a finished run's scores with SHAP: `python explain.py run=RUN_DIR [input=FILE]`.

Attributions per physics feature, rankings and figures, for a sample of events and for the
events the run's cut selects, written into logs/explain/runs/<time>/; see conf/explain.yaml
for every key. Needs the optional shap dependency: pip install 'amsaware[explain]'.
"""

import hydra
from omegaconf import DictConfig

from amsaware.cli import reports_errors
from amsaware.explain import run_explain


@hydra.main(version_base="1.3", config_path="conf", config_name="explain")
@reports_errors
def main(cfg: DictConfig) -> None:
    run_explain(cfg)


if __name__ == "__main__":
    main()
