"""The resource-management commands' parsers and jobs, joined to main.py's client commands in two places:
``add_resource_commands`` (the ``pipeline`` and ``experiment`` groups, ``model list|metadata``, ``server list``,
``--output``, top-level ``load|unload`` and ``status -f``) and ``job`` (what each of them runs).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Coroutine
from typing import Any

from modelplane.addresses import Address
from modelplane.cli import (
    experiment_commands,
    inventory_commands,
    manifest_commands,
    pipeline_commands,
    status_command,
)
from modelplane.cli.scheduler_session import Scheduler
from modelplane.output_formats import add_output_flag, render
from modelplane.transport import TransportSecurity

GROUPS = ("pipeline", "experiment")
TOP_LEVEL = ("load", "unload")
Job = Callable[[], Coroutine[Any, Any, str]]


def add_resource_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Needs the ``model``, ``server`` and ``status`` parsers made already."""
    pipeline_commands.add_pipeline_commands(commands)
    experiment_commands.add_experiment_commands(commands)
    inventory_commands.add_inventory_commands(commands)
    for name, verb in (("load", "load"), ("unload", "unload")):
        parser = commands.add_parser(
            name,
            help=f"{verb} every resource of a manifest: Server, Model, Pipeline, Experiment (several per file)",
            description=f"{verb.capitalize()} every resource a manifest holds (YAML documents separated by ---; any of "
            "Seldon's kinds Model, Pipeline, Experiment, Server, ServerConfig), in order: servers, models, pipelines, "
            "experiments to load, the reverse to unload. The whole file is checked before the first call.",
        )
        parser.add_argument("-f", "--file", required=True, metavar="FILE", help="the manifest, or - for stdin")
    status = dict(commands.choices)["status"]
    status.add_argument(
        "-f", "--file", metavar="FILE", help="the status of every resource of this manifest (- for stdin) instead"
    )
    add_output_flag(status)


def usage_problem(section: str, action: str | None, options: argparse.Namespace) -> str | None:
    """A combination of flags argparse cannot refuse by itself."""
    if section in GROUPS and action == "status" and options.wait and not options.name:
        return f"-w needs {'an' if section[0] in 'aeiou' else 'a'} {section} name"
    if section == "model" and action == "status" and options.watch and options.output != "table":
        return "--watch prints a table; leave out --output"
    return None


def job(  # noqa: PLR0911 - one return per command
    section: str,
    action: str | None,
    options: argparse.Namespace,
    address: Address,
    security: TransportSecurity,
    *,
    token: str | None,
) -> Job | None:
    """The job of a command this module added, or None for main.py's own."""
    scheduler = Scheduler(address, security, options.timeout, token)
    output: str = getattr(options, "output", "table")
    if section in TOP_LEVEL:
        run = manifest_commands.load if section == "load" else manifest_commands.unload
        return lambda: run(scheduler, options.file)
    if section == "status" and options.file:
        return lambda: manifest_commands.status(scheduler, options.file, output)
    if section == "status" and output != "table":
        return lambda: _scheduler_report(scheduler, output)
    if section == "pipeline":
        return _pipeline_job(scheduler, action, options, output)
    if section == "experiment":
        return _experiment_job(scheduler, action, options, output)
    if section == "model" and action == "list":
        return lambda: inventory_commands.model_list(scheduler, output)
    if section == "model" and action == "status" and output != "table":
        return lambda: inventory_commands.model_status_records(scheduler, options.name, output)
    if section == "server" and action == "list":
        return lambda: inventory_commands.server_list(scheduler, output)
    if section == "server" and action == "status":
        return lambda: inventory_commands.server_status(scheduler, options.name, output)
    return None


def _pipeline_job(scheduler: Scheduler, action: str | None, options: argparse.Namespace, output: str) -> Job:
    if action == "load":
        return lambda: pipeline_commands.load(scheduler, options.file)
    if action == "unload":
        return lambda: pipeline_commands.unload(scheduler, options.name)
    if action == "list":
        return lambda: pipeline_commands.listing(scheduler, output)
    if options.wait:
        return lambda: pipeline_commands.wait(scheduler, options.name, options.wait, options.wait_timeout)
    return lambda: pipeline_commands.status(scheduler, options.name, output)


def _experiment_job(scheduler: Scheduler, action: str | None, options: argparse.Namespace, output: str) -> Job:
    if action == "start":
        return lambda: experiment_commands.start(scheduler, options.file)
    if action == "stop":
        return lambda: experiment_commands.stop(scheduler, options.name)
    if action == "list":
        return lambda: experiment_commands.listing(scheduler, output)
    if options.wait:
        return lambda: experiment_commands.wait(scheduler, options.name, options.wait_timeout)
    return lambda: experiment_commands.status(scheduler, options.name, output)


async def _scheduler_report(scheduler: Scheduler, output: str) -> str:
    """``modelplane status --output json|yaml``: the scheduler's report as a record (the table is main.py's)."""
    report = await status_command.fetch_report(
        scheduler.address, scheduler.security, scheduler.timeout, token=scheduler.token
    )
    record = {
        "address": str(report.address),
        "version": report.version,
        "health": report.health,
        "services": list(report.services),
        "models": report.models,
        "servers": report.servers,
        "replicas": report.replicas,
    }
    return render(output, record, report.render)
