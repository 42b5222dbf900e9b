"""Export a finished run: `python export.py run=RUN_DIR format=onnx [scorer=folds]`.

Composes the Hydra config and hands it to the library; see conf/export.yaml for every key.
"""

import hydra
from omegaconf import DictConfig

from amsaware.cli import reports_errors
from amsaware.export import export
from amsaware.inference import ApplyRequest


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
@reports_errors
def main(cfg: DictConfig) -> None:
    request = ApplyRequest.from_config(cfg)
    export(request.run, cfg.format, request.output, request.scorer)


if __name__ == "__main__":
    main()
