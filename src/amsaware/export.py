"""Export a finished run as one ONNX graph: raw features in, signal probability out.

The graph takes the run's raw features (float32, NaN or the run's placeholder where undefined:
the challenge's -999, or `data.placeholder` of a run on samples), applies
each model's fitted imputation and scaling, runs the network(s) and returns the probability
(float64, like `predict_proba`, so that saturated scores keep their ranks); for the fold
ensemble, the mean over the fold models. Anything that runs ONNX (onnxruntime, ROOT's SOFIE,
a C++ analysis) then needs no Python and no separate preprocessing step.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from amsaware.data.samples import placeholder_values
from amsaware.data.schema import MISSING
from amsaware.inference import Scorer, check_output, load_scorer, placeholder_of
from amsaware.run_folder import RunFolder, atomic_path

log = logging.getLogger(__name__)

FORMATS = ("onnx",)
INPUT_NAME = "features"
OUTPUT_NAME = "score"


class RawFeatureScorer(nn.Module):
    """Preprocessing folded in front of the network(s) of a scorer, as torch operations.

    The arithmetic is that of `FittedPreprocessing.transform` (float32 statistics, fill then
    subtract then divide), so the inputs the networks see are bit-identical. NaN, and per
    feature its `placeholders` value (default the challenge's -999; NaN for none), count as
    undefined. A network parameterised by the nuisances (`amsaware.model.NuisanceMLP`) appends
    its nominal inputs (zeros) itself, so the graph scores at the nominal nuisance values.
    """

    def __init__(self, scorer: Scorer, placeholders: np.ndarray | None = None) -> None:
        super().__init__()
        self.nets = nn.ModuleList(model.net for model in scorer.models)
        stats = [model.preprocessing for model in scorer.models]

        def stack(name: str) -> Tensor:
            return torch.stack(
                [torch.as_tensor(getattr(s, name), dtype=torch.float32) for s in stats]
            )

        self.register_buffer("fill", stack("fill"))
        self.register_buffer("mean", stack("mean"))
        self.register_buffer("scale", stack("scale"))
        if placeholders is None:
            placeholders = np.full(len(scorer.feature_names), MISSING)
        self.register_buffer("placeholder", torch.as_tensor(placeholders, dtype=torch.float32))

    def forward(self, features: Tensor) -> Tensor:
        missing = torch.isnan(features) | (features == self.placeholder)
        scores = []
        for k, net in enumerate(self.nets):
            x = torch.where(missing, self.fill[k], features)
            x = (x - self.mean[k]) / self.scale[k]
            scores.append(torch.sigmoid(net(x).double()))
        return torch.stack(scores).mean(dim=0)


def _check_exporter() -> None:
    """torch's dynamo exporter (torch >= 2.5) and onnxscript, or an error saying what to install."""
    if "dynamo" not in inspect.signature(torch.onnx.export).parameters:
        raise RuntimeError(
            f"ONNX export needs torch >= 2.5 (its dynamo exporter); this is {torch.__version__}"
        )
    if importlib.util.find_spec("onnxscript") is None:
        raise ImportError(
            "ONNX export needs onnxscript (torch's exporter) and onnx: "
            "pip install 'amsaware[export]'"
        )


def _inline_weights() -> dict[str, bool]:
    """`external_data=False` where torch's exporter has the option (torch >= 2.6)."""
    parameters = inspect.signature(torch.onnx.export).parameters
    return {"external_data": False} if "external_data" in parameters else {}


def _check_self_contained(written: Path, output: Path) -> None:
    """No weights file beside the graph: remove one and say so (an older torch)."""
    beside = Path(f"{written}.data")
    if beside.exists():
        beside.unlink()
        raise RuntimeError(
            f"{output}: this torch ({torch.__version__}) wrote the weights to a separate file; "
            "a self-contained ONNX file needs torch >= 2.6"
        )


def _quiet_exporter() -> None:
    """Keep the exporter's per-pass INFO lines (and torchvision notices) out of the log."""
    for name in ("onnxscript", "onnx_ir", "torch.onnx"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)


def export_onnx(
    run_dir: str | Path,
    output_path: str | Path | None = None,
    scorer: str | None = None,
    opset: int = 20,
) -> Path:
    """Write the run's scorer as one self-contained ONNX file, batch dimension dynamic.

    The file is written atomically and holds its weights (no external data file), so it can
    be copied anywhere on its own.
    """
    _check_exporter()
    if output_path is not None:
        check_output(Path(output_path))
    run = RunFolder(run_dir)
    model = load_scorer(run_dir, scorer)
    placeholders = placeholder_values(placeholder_of(run.config()), model.feature_names)
    module = RawFeatureScorer(model, placeholders).eval()
    output = run.onnx_path(model.name) if output_path is None else Path(output_path)
    example = torch.zeros(2, len(model.feature_names))
    batch = torch.export.Dim("events")
    _quiet_exporter()
    with atomic_path(output) as tmp, warnings.catch_warnings():
        # torch's dynamo exporter (its default; needs onnxscript). Lightning's pytree use
        # warns inside torch.export with torch 2.13; harmless.
        warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
        torch.onnx.export(
            module,
            (example,),
            str(tmp),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},),
            opset_version=opset,
            dynamo=True,
            verbose=False,
            # One self-contained file: the weights inside the graph, not in a `<name>.data`
            # file beside it (which, written through the temporary name, would be orphaned).
            **_inline_weights(),
        )
        _check_self_contained(tmp, output)
    log.info(
        "%s: ONNX graph of the %s model(s) of %s; input %r float32 (n, %d) %s with NaN or the "
        "placeholder %s for undefined values, output %r float64 (n,)",
        output,
        model.name,
        run_dir,
        INPUT_NAME,
        len(model.feature_names),
        list(model.feature_names),
        sorted({float(p) for p in placeholders if np.isfinite(p)}) or "(none)",
        OUTPUT_NAME,
    )
    return output


def export(
    run_dir: str | Path,
    format: str = "onnx",
    output_path: str | Path | None = None,
    scorer: str | None = None,
) -> Path:
    """The run's scorer in `format` (export.py's body; only the request's run, output and
    scorer apply)."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    return export_onnx(run_dir, output_path, scorer)
