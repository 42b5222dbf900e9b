"""Score new events with a finished run: `python predict.py run=RUN_DIR input=FILE [output=...]`.

Composes the Hydra config and hands it to the library; see conf/predict.yaml for every key.
"""

import hydra
from omegaconf import DictConfig

from amsaware.cli import reports_errors
from amsaware.inference import ApplyRequest, predict_file


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
@reports_errors
def main(cfg: DictConfig) -> None:
    predict_file(ApplyRequest.from_config(cfg))


if __name__ == "__main__":
    main()
