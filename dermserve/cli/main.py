"""`dermserve`: the command-line client, for operators and smoke tests.

    dermserve classify IMAGE... [--format table|json|fhir] [--json] [--target HOST:PORT]
                                [--version N | --label L] [--age YEARS] [--sex S] [--site S]
                                [--token T] [--tls] [--tls-ca F] [--tls-cert F --tls-key F]
    dermserve explain IMAGE [--label CLASS] [--output overlay.png] [--json]
                            [--version N | --version-label L] [--age YEARS] [--sex S] [--site S]
    dermserve models [--json]
    dermserve batch ...          (cli/batch.py)

Every subcommand sets `func(args) -> exit status` and connects through client/connection.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import grpc
from google.protobuf.json_format import MessageToDict

from dermserve.cli.batch import add_batch_commands, quiet_on_closed_pipe
from dermserve.cli.reading import VersionFacts, reading
from dermserve.client.connection import (
    add_connection_arguments,
    call_metadata,
    error_entry,
    open_channel,
)
from dermserve.v1 import lesion_classifier_pb2 as pb
from dermserve.v1 import lesion_classifier_pb2_grpc as pb_grpc

Command = Callable[[argparse.Namespace], int]
RESULT_FORMATS = {"table": pb.RESULT_FORMAT_UNSPECIFIED, "json": pb.RESULT_FORMAT_UNSPECIFIED,
                  "fhir": pb.RESULT_FORMAT_FHIR}
"""`--format` choices and what each asks the server for."""
READING_WIDTH = 96  # columns of the headline and cues: they fit an 80- to 100-column terminal


def selector(args: argparse.Namespace) -> pb.ModelSelector | None:
    return model_selector(args.version, args.label)


def model_selector(version: int | None, version_label: str | None) -> pb.ModelSelector | None:
    if version is not None:
        return pb.ModelSelector(version=version)
    if version_label:
        return pb.ModelSelector(version_label=version_label)
    return None


def patient_context(args: argparse.Namespace) -> pb.PatientContext | None:
    """--age, --sex and --site as the request's context (the server checks them), or None."""
    given = {name: getattr(args, name) for name in ("age_years", "sex", "site")
             if getattr(args, name) is not None}
    return pb.PatientContext(**given) if given else None


def classify_one(stub: pb_grpc.LesionClassifierStub, path: Path,
                 args: argparse.Namespace) -> dict[str, Any]:
    entry: dict[str, Any] = {"image": str(path)}
    try:
        data = path.read_bytes()
    except OSError as exc:
        entry["error"] = {"code": "LOCAL", "reason": "UNREADABLE_FILE", "message": str(exc)}
        return entry
    try:
        response = stub.Classify(pb.ClassifyRequest(image=data, model=selector(args),
                                                    format=RESULT_FORMATS[args.format],
                                                    context=patient_context(args)),
                                 timeout=args.timeout, metadata=call_metadata(args))
        entry["result"] = MessageToDict(response, preserving_proto_field_name=True,
                                        always_print_fields_with_no_presence=True)
    except grpc.RpcError as exc:
        entry["error"] = error_entry(exc)
    return entry


def print_entry(entry: dict[str, Any], out: TextIO,
                facts: Mapping[int, VersionFacts] | None = None) -> None:
    """One image: its headline and cues (cli/reading.py), then every class's probability."""
    if "error" in entry:
        error = entry["error"]
        print(f"{entry['image']}: {error['code']} {error['reason']}: {error['message']}",
              file=out)
        return
    result = entry["result"]
    model = result["model"]
    print(entry["image"], file=out)
    lines = reading(result, (facts or {}).get(int(model["version"])))
    if result.get("context_used"):
        lines.append("The patient context (age, sex, site) was used by this version.")
    lines.append(f"Model {model['name']} v{model['version']}, request {result['request_id']}")
    for line in lines:
        print(textwrap.fill(line, READING_WIDTH, initial_indent="  ", subsequent_indent="    "),
              file=out)
    for item in result["probabilities"]:
        print(f"    {item['label']:<6} {item['display_name']:<48} {item['probability']:.3f}",
              file=out)


def version_facts(stub: pb_grpc.LesionClassifierStub, entries: Sequence[dict[str, Any]],
                  args: argparse.Namespace) -> dict[int, VersionFacts]:
    """GetModel's thresholds and metrics for each version that answered (none if it fails:
    the table then shows what the responses alone say)."""
    versions = {int(e["result"]["model"]["version"]) for e in entries if "result" in e}
    facts: dict[int, VersionFacts] = {}
    for version in sorted(versions):
        try:
            described = stub.GetModel(pb.GetModelRequest(model=pb.ModelSelector(version=version)),
                                      timeout=args.timeout, metadata=call_metadata(args))
        except grpc.RpcError:
            continue
        facts[version] = VersionFacts.from_model_version(described.version)
    return facts


def print_fhir(entries: Sequence[dict[str, Any]], out: TextIO, errors: TextIO) -> None:
    """One FHIR Bundle per classified image, one per line (a single image: one JSON document);
    errors go to `errors`, as in the table."""
    for entry in entries:
        if "error" in entry:
            print_entry(entry, errors)
        else:
            print(entry["result"]["fhir_bundle_json"], file=out)


def run_classify(args: argparse.Namespace) -> int:
    if args.json:
        args.format = "json"
    with open_channel(args) as channel:
        stub = pb_grpc.LesionClassifierStub(channel)
        entries = [classify_one(stub, Path(image), args) for image in args.images]
        facts = version_facts(stub, entries, args) if args.format == "table" else {}
    if args.format == "fhir":
        print_fhir(entries, sys.stdout, sys.stderr)
    elif args.format == "json":
        json.dump(entries, sys.stdout, indent=2)
        print()
    else:
        for entry in entries:
            print_entry(entry, sys.stdout, facts)
    return 1 if any("error" in entry for entry in entries) else 0


def run_explain(args: argparse.Namespace) -> int:
    """Explain one image: the probabilities as `classify` prints them, the class explained and
    the heatmap's size; the overlay PNG goes to --output."""
    path = Path(args.image)
    try:
        request = pb.ExplainRequest(image=path.read_bytes(), label=args.label or "",
                                    model=model_selector(args.version, args.version_label),
                                    context=patient_context(args))
    except OSError as exc:
        print(f"{path}: LOCAL UNREADABLE_FILE: {exc}", file=sys.stderr)
        return 1
    with open_channel(args) as channel:
        stub = pb_grpc.LesionClassifierStub(channel)
        try:
            response = stub.Explain(request, timeout=args.timeout, metadata=call_metadata(args))
        except grpc.RpcError as exc:
            print_entry({"image": str(path), "error": error_entry(exc)}, sys.stderr)
            return 1
        entry = {"image": str(path), "result": MessageToDict(
            response.classification, preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True)}
        facts = {} if args.json else version_facts(stub, [entry], args)
    if args.output is not None:
        args.output.write_bytes(response.overlay_png)
    if args.json:
        shown = MessageToDict(response, preserving_proto_field_name=True,
                              always_print_fields_with_no_presence=True)
        shown.pop("overlay_png", None)  # the PNG is in --output, not base64 on the terminal
        print(json.dumps(shown, indent=2))
        return 0
    print_entry(entry, sys.stdout, facts)
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
    classify = commands.add_parser("classify", help="classify JPEG, PNG or DICOM images")
    classify.add_argument("images", nargs="+", metavar="IMAGE")
    classify.add_argument("--format", choices=tuple(RESULT_FORMATS), default="table",
                          help="a table, the responses as JSON, or a FHIR Bundle per image")
    classify.add_argument("--json", action="store_true", help="the same as --format json")
    which = classify.add_mutually_exclusive_group()
    which.add_argument("--version", type=int, help="pin a model version")
    which.add_argument("--label", help="use a labelled version, e.g. stable")
    add_context_arguments(classify)
    add_connection_arguments(classify, environ)
    classify.set_defaults(func=run_classify)
    add_explain_command(commands, environ)
    models = commands.add_parser("models", help="list the model versions")
    models.add_argument("--json", action="store_true")
    add_connection_arguments(models, environ)
    models.set_defaults(func=run_models)
    add_batch_commands(commands, environ)
    return parser


def add_context_arguments(parser: argparse.ArgumentParser) -> None:
    """The optional patient context, sent with every image of the command."""
    context = parser.add_argument_group(
        "patient context", "optional; used only by a model version that takes it "
        "(docs/integration.md); for a DICOM image it overrides the file's tags")
    context.add_argument("--age", dest="age_years", type=float, metavar="YEARS",
                         help="the age in years, 0 to 120")
    context.add_argument("--sex", help="female or male")
    context.add_argument("--site", help='the body site, e.g. "upper extremity", "back"')


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
    add_context_arguments(explain)
    add_connection_arguments(explain, environ)
    explain.set_defaults(func=run_explain)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser(os.environ).parse_args(argv)
    command: Command = args.func
    return quiet_on_closed_pipe(lambda: command(args))


if __name__ == "__main__":
    sys.exit(main())
