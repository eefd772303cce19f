"""The ``pipeline`` and ``experiment`` command groups, holding the inference actions (``infer``, ``inspect``).

Minimal on purpose: the groups' managing actions (load, unload, start, stop, status, list) are built elsewhere, and
when both exist the inference actions join those groups through modelplane.cli.infer_commands' parser functions.
"""

from __future__ import annotations

import argparse

from modelplane.cli.infer_commands import add_infer_parser, add_inspect_parser


def add_inference_groups(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    pipeline = commands.add_parser(
        "pipeline", help="send requests to pipelines", description="Send requests to pipelines through the gateway."
    )
    pipeline_actions = pipeline.add_subparsers(dest="pipeline_command", metavar="ACTION", required=True)
    add_infer_parser(pipeline_actions, "pipeline")
    add_inspect_parser(pipeline_actions)
    experiment = commands.add_parser(
        "experiment",
        help="send requests to experiments",
        description="Send requests to experiments through the gateway.",
    )
    experiment_actions = experiment.add_subparsers(dest="experiment_command", metavar="ACTION", required=True)
    add_infer_parser(experiment_actions, "experiment")
