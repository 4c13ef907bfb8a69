"""`dermserve`: the command-line client, for operators and smoke tests.

    dermserve classify IMAGE... [--json] [--target HOST:PORT] [--version N | --label L]
                                [--token T] [--tls] [--tls-ca F] [--tls-cert F --tls-key F]
    dermserve explain IMAGE [--label CLASS] [--output overlay.png] [--json]
                            [--version N | --version-label L]
    dermserve models [--json]
    dermserve batch ...          (cli/batch.py)

Every subcommand sets `func(args) -> exit status` and connects through cli/connection.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import grpc
from google.protobuf.json_format import MessageToDict

from cli.batch import add_batch_commands
from cli.connection import add_connection_arguments, call_metadata, error_entry, open_channel
from dermserve.v1 import lesion_classifier_pb2 as pb
from dermserve.v1 import lesion_classifier_pb2_grpc as pb_grpc

Command = Callable[[argparse.Namespace], int]


def selector(args: argparse.Namespace) -> pb.ModelSelector | None:
    return model_selector(args.version, args.label)


def model_selector(version: int | None, version_label: str | None) -> pb.ModelSelector | None:
    if version is not None:
        return pb.ModelSelector(version=version)
    if version_label:
        return pb.ModelSelector(version_label=version_label)
    return None


def classify_one(stub: pb_grpc.LesionClassifierStub, path: Path,
                 args: argparse.Namespace) -> dict[str, Any]:
    entry: dict[str, Any] = {"image": str(path)}
    try:
        data = path.read_bytes()
    except OSError as exc:
        entry["error"] = {"code": "LOCAL", "reason": "UNREADABLE_FILE", "message": str(exc)}
        return entry
    try:
        response = stub.Classify(pb.ClassifyRequest(image=data, model=selector(args)),
                                 timeout=args.timeout, metadata=call_metadata(args))
        entry["result"] = MessageToDict(response, preserving_proto_field_name=True,
                                        always_print_fields_with_no_presence=True)
    except grpc.RpcError as exc:
        entry["error"] = error_entry(exc)
    return entry


def print_entry(entry: dict[str, Any], out: TextIO) -> None:
    if "error" in entry:
        error = entry["error"]
        print(f"{entry['image']}: {error['code']} {error['reason']}: {error['message']}",
              file=out)
        return
    result = entry["result"]
    model = result["model"]
    verdict = ("ABSTAINED (" + result["abstention_reason"].replace("ABSTENTION_REASON_", "")
               + "): needs human review" if result["abstained"] else f"top {result['top_label']}")
    print(f"{entry['image']}: {verdict}  [model {model['name']} v{model['version']}, "
          f"request {result['request_id']}]", file=out)
    for item in result["probabilities"]:
        print(f"  {item['label']:<6} {item['display_name']:<48} {item['probability']:.3f}",
              file=out)


def run_classify(args: argparse.Namespace) -> int:
    with open_channel(args) as channel:
        stub = pb_grpc.LesionClassifierStub(channel)
        entries = [classify_one(stub, Path(image), args) for image in args.images]
    if args.json:
        json.dump(entries, sys.stdout, indent=2)
        print()
    else:
        for entry in entries:
            print_entry(entry, sys.stdout)
    return 1 if any("error" in entry for entry in entries) else 0


def run_explain(args: argparse.Namespace) -> int:
    """Explain one image: the probabilities as `classify` prints them, the class explained and
    the heatmap's size; the overlay PNG goes to --output."""
    path = Path(args.image)
    try:
        request = pb.ExplainRequest(image=path.read_bytes(), label=args.label or "",
                                    model=model_selector(args.version, args.version_label))
    except OSError as exc:
        print(f"{path}: LOCAL UNREADABLE_FILE: {exc}", file=sys.stderr)
        return 1
    with open_channel(args) as channel:
        try:
            response = pb_grpc.LesionClassifierStub(channel).Explain(
                request, timeout=args.timeout, metadata=call_metadata(args))
        except grpc.RpcError as exc:
            print_entry({"image": str(path), "error": error_entry(exc)}, sys.stderr)
            return 1
    if args.output is not None:
        args.output.write_bytes(response.overlay_png)
    if args.json:
        shown = MessageToDict(response, preserving_proto_field_name=True,
                              always_print_fields_with_no_presence=True)
        shown.pop("overlay_png", None)  # the PNG is in --output, not base64 on the terminal
        print(json.dumps(shown, indent=2))
        return 0
    result = MessageToDict(response.classification, preserving_proto_field_name=True,
                           always_print_fields_with_no_presence=True)
    print_entry({"image": str(path), "result": result}, sys.stdout)
    where = f", overlay written to {args.output}" if args.output is not None else ""
    print(f"explained {response.explained_label}: heatmap {response.heatmap.height}x"
          f"{response.heatmap.width}{where}")
    return 0


def run_models(args: argparse.Namespace) -> int:
    with open_channel(args) as channel:
        stub = pb_grpc.LesionClassifierStub(channel)
        try:
            response = stub.ListModels(pb.ListModelsRequest(), timeout=args.timeout,
                                       metadata=call_metadata(args))
        except grpc.RpcError as exc:
            print(json.dumps(error_entry(exc)), file=sys.stderr)
            return 1
    versions = [MessageToDict(v, preserving_proto_field_name=True) for v in response.versions]
    if args.json:
        print(json.dumps(versions, indent=2))
        return 0
    for version in versions:
        labels = ",".join(version.get("version_labels", [])) or "-"
        print(f"{version['model']['name']} v{version['model']['version']}  "
              f"{version['state'].replace('MODEL_VERSION_STATE_', ''):<10} labels {labels}  "
              f"{version.get('description', '')}")
    return 0


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dermserve", description="dermserve client")
    commands = parser.add_subparsers(dest="command", required=True)
    classify = commands.add_parser("classify", help="classify JPEG or PNG images")
    classify.add_argument("images", nargs="+", metavar="IMAGE")
    classify.add_argument("--json", action="store_true", help="print JSON instead of a table")
    which = classify.add_mutually_exclusive_group()
    which.add_argument("--version", type=int, help="pin a model version")
    which.add_argument("--label", help="use a labelled version, e.g. stable")
    add_connection_arguments(classify, environ)
    classify.set_defaults(func=run_classify)
    add_explain_command(commands, environ)
    models = commands.add_parser("models", help="list the model versions")
    models.add_argument("--json", action="store_true")
    add_connection_arguments(models, environ)
    models.set_defaults(func=run_models)
    add_batch_commands(commands, environ)
    return parser


def add_explain_command(commands: Any, environ: Mapping[str, str]) -> None:
    explain = commands.add_parser("explain", help="classify one image and show where the "
                                  "model looked (Grad-CAM heatmap over the image)")
    explain.add_argument("image", metavar="IMAGE")
    explain.add_argument("--label", help="the class to explain, e.g. mel (default: the top "
                         "class)")
    explain.add_argument("--output", type=Path, help="write the heatmap overlay PNG here")
    explain.add_argument("--json", action="store_true",
                         help="print the response (without the PNG) as JSON")
    which = explain.add_mutually_exclusive_group()
    which.add_argument("--version", type=int, help="pin a model version")
    which.add_argument("--version-label", help="use a labelled version, e.g. stable")
    add_connection_arguments(explain, environ)
    explain.set_defaults(func=run_explain)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser(os.environ).parse_args(argv)
    command: Command = args.func
    return command(args)


if __name__ == "__main__":
    sys.exit(main())
