"""`dermserve`: the command-line client, for operators and smoke tests.

    dermserve classify IMAGE... [--json] [--target HOST:PORT] [--version N | --label L]
                                [--token T] [--tls] [--tls-ca F] [--tls-cert F --tls-key F]
    dermserve models [--json]
    dermserve batch ...          (registered by worker/cli.py when the worker is installed)

Connection flags read DERMSERVE_TARGET, DERMSERVE_TOKEN, DERMSERVE_TLS_CA, ... as defaults.
Other packages add subcommands with `add_batch_commands(subparsers)`; each subcommand sets
`func(args) -> exit status` and may reuse `add_connection_arguments` and `open_channel`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO, cast

import grpc
from google.protobuf.json_format import MessageToDict

from core.tls import channel_credentials
from dermserve.v1 import lesion_classifier_pb2 as pb
from dermserve.v1 import lesion_classifier_pb2_grpc as pb_grpc
from service import defaults
from service.status import REASON_METADATA_KEY

Command = Callable[[argparse.Namespace], int]


def add_connection_arguments(parser: argparse.ArgumentParser,
                             environ: Mapping[str, str]) -> None:
    """Where the service is and how to authenticate; env DERMSERVE_* gives the defaults."""
    group = parser.add_argument_group("connection")
    group.add_argument("--target", default=environ.get("DERMSERVE_TARGET",
                                                       defaults.DEFAULT_LISTEN_ADDRESS),
                       help="service address host:port [env DERMSERVE_TARGET]")
    group.add_argument("--token", default=environ.get("DERMSERVE_TOKEN"),
                       help="bearer token [env DERMSERVE_TOKEN]")
    group.add_argument("--tls", action="store_true",
                       default=bool(environ.get("DERMSERVE_TLS_CA")),
                       help="use TLS (system roots unless --tls-ca)")
    for name, text in (("ca", "CA certificate to trust"), ("cert", "client certificate (mTLS)"),
                       ("key", "client private key (mTLS)")):
        env = f"DERMSERVE_TLS_{name.upper()}"
        group.add_argument(f"--tls-{name}", type=Path, default=environ.get(env) or None,
                           help=f"{text} [env {env}]")
    group.add_argument("--timeout", type=float, default=defaults.DEFAULT_CLIENT_TIMEOUT_S,
                       help="seconds per call")


def open_channel(args: argparse.Namespace) -> grpc.Channel:
    if args.tls or args.tls_ca or args.tls_cert:
        return grpc.secure_channel(args.target, channel_credentials(args.tls_ca, args.tls_cert,
                                                                    args.tls_key))
    return grpc.insecure_channel(args.target)


def call_metadata(args: argparse.Namespace) -> tuple[tuple[str, str], ...] | None:
    return (("authorization", f"Bearer {args.token}"),) if args.token else None


def selector(args: argparse.Namespace) -> pb.ModelSelector | None:
    if args.version is not None:
        return pb.ModelSelector(version=args.version)
    if args.label:
        return pb.ModelSelector(version_label=args.label)
    return None


def error_entry(error: grpc.RpcError) -> dict[str, str]:
    call = cast(grpc.Call, error)  # an error raised by a stub call is also that grpc.Call
    # At run time metadata items are (key, value) tuples; grpc-stubs types them otherwise.
    pairs = cast(Sequence[tuple[str, str]], call.trailing_metadata() or ())
    reason = next((str(value) for key, value in pairs if key == REASON_METADATA_KEY), "")
    return {"code": call.code().name, "reason": reason, "message": call.details() or ""}


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
    models = commands.add_parser("models", help="list the model versions")
    models.add_argument("--json", action="store_true")
    add_connection_arguments(models, environ)
    models.set_defaults(func=run_models)
    add_optional_commands(commands)
    return parser


def add_optional_commands(commands: Any) -> None:
    """`dermserve batch ...` comes from the worker package; the client works without it."""
    try:
        from worker.cli import add_batch_commands  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return
    add_batch_commands(commands)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser(os.environ).parse_args(argv)
    command: Command = args.func
    return command(args)


if __name__ == "__main__":
    sys.exit(main())
