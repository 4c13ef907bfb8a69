"""The one stand-in model exporter: UNTRAINED versions with the real serving contract, so that
`make run` works and `make bench` can time serving before the released model lands in models/.
Their answers mean nothing.

    python -m devtools.stack.stand_in --out var/demo-models      (or `make demo-model`): a tiny
        placeholder (a random linear map of pooled colours), quick to export and to load;
    python -m devtools.stack.stand_in --mobilenet-sized [--weights H5]: a MobileNetV2 at the
        released model's input size, the released model's compute without its skill, for benchmarks.
"""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Sequence
from pathlib import Path

from dermserve.core.model_config import HAM10000_DISPLAY_NAMES, InputSpec, ModelConfig

DEMO_INPUT = InputSpec(height=192, width=192)  # the released model's input size
DEMO_DESCRIPTION = ("UNTRAINED PLACEHOLDER for demos and smoke tests: a random linear map of "
                    "pooled colours with the real serving contract. Its predictions are "
                    "meaningless; never use it on patients.")


def demo_config() -> ModelConfig:
    return ModelConfig(labels=tuple(HAM10000_DISPLAY_NAMES), display_names=HAM10000_DISPLAY_NAMES,
                       input=DEMO_INPUT, metrics={"untrained_placeholder": True},
                       description=DEMO_DESCRIPTION)


def export(out: Path, model_name: str, version: int = 1) -> Path:
    """Write version `version` under `out/model_name/`, publishing it with a rename."""
    from dermserve.trainer.export import export_tiny_version

    model_dir = out / model_name
    final = model_dir / str(version)
    staging = model_dir / f"tmp-demo-{version}"  # not a number: no backend loads it half-written
    shutil.rmtree(staging, ignore_errors=True)
    model_dir.mkdir(parents=True, exist_ok=True)
    export_tiny_version(staging, demo_config(), seed=version)
    staging.rename(final)
    return final


def export_mobilenet_sized(out: Path, model_name: str, version: int = 1,
                           weights: Path | None = None) -> Path:
    """A MobileNetV2 (192x192) with the contract, randomly initialised or on ImageNet `weights`
    when that file exists: the released model's compute without its skill, to benchmark serving
    and batch jobs before the released model exists."""
    from dermserve.trainer.export import ServingModule, save_version
    from dermserve.trainer.network import build_network

    config = demo_config()
    usable = weights if weights is not None and weights.is_file() else None
    network = build_network(len(config.labels), DEMO_INPUT, "mobilenet_v2", weights_path=usable)
    final = out / model_name / str(version)
    staging = out / model_name / f"tmp-demo-{version}"
    shutil.rmtree(staging, ignore_errors=True)
    model_dir = out / model_name
    model_dir.mkdir(parents=True, exist_ok=True)
    save_version(ServingModule(network, config), config, staging)
    staging.rename(final)
    return final


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m devtools.stack.stand_in", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("var/demo-models"))
    parser.add_argument("--model-name", default="ham10000")
    parser.add_argument("--mobilenet-sized", action="store_true",
                        help="export a MobileNetV2 instead (for benchmarks)")
    parser.add_argument("--weights", type=Path, help="ImageNet weights for --mobilenet-sized")
    args = parser.parse_args(argv)
    if args.mobilenet_sized:
        print(f"exported {export_mobilenet_sized(args.out, args.model_name, weights=args.weights)}")
        return
    if (args.out / args.model_name / "1" / "saved_model.pb").exists():
        print(f"demo model already at {args.out / args.model_name / '1'}")
        return
    print(f"exported the untrained placeholder to {export(args.out, args.model_name)}")


if __name__ == "__main__":
    main()
