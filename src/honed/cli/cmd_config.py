"""``honed config migrate|schema``: translate Olive configs, export the JSON Schema."""

from __future__ import annotations

import argparse
import json

from honed.config.jsonschema import workflow_schema
from honed.config.load import honed_dict, load_workflow


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="Translate a config to honed's schema, or print the JSON Schema.",
                       epilog="examples:\n  honed config migrate olive_config.json > workflow.json\n"
                              "  honed config schema > honed.schema.json",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    csub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    m = csub.add_parser("migrate", help="Print a config (any Olive generation) in honed's schema, defaults filled.",
                        epilog="example:\n  honed config migrate olive_config.json > workflow.json",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    m.add_argument("file", help="Workflow file (JSON or YAML).")
    m.set_defaults(func=_migrate)
    s = csub.add_parser("schema", help="Print the JSON Schema of workflow files, for editors.",
                        epilog="example:\n  honed config schema > honed.schema.json",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    s.set_defaults(func=_schema)


def _migrate(args: argparse.Namespace) -> int:
    print(json.dumps(honed_dict(load_workflow(args.file)), indent=2))
    return 0


def _schema(args: argparse.Namespace) -> int:
    print(json.dumps(workflow_schema(), indent=2))
    return 0
