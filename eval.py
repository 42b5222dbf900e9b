"""Evaluate a finished run on a labelled file: `python eval.py run=RUN_DIR input=FILE`.

Writes the scores (as predict.py) and eval_metrics.json beside them with every test/ metric,
into RUN/eval/<input name>/ unless output= names the scores file; see conf/eval.yaml.
"""

import hydra
from omegaconf import DictConfig

from amsaware.cli import reports_errors
from amsaware.evaluation import evaluate_file
from amsaware.inference import ApplyRequest


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
@reports_errors
def main(cfg: DictConfig) -> None:
    evaluate_file(ApplyRequest.from_config(cfg))


if __name__ == "__main__":
    main()
