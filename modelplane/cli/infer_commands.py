"""``infer`` for a model, a pipeline or an experiment, and ``pipeline inspect``: V2 REST requests to a gateway.

Everything goes through the gateway (``--gateway HOST:PORT``, default 127.0.0.1:9000, the address ``modelplane
up`` prints), so what is tried is what applications get: experiments' splits, pipelines, the gateway's checks.

- ``--data`` is the V2 request as JSON, ``@FILE`` to read it from a file, or ``-`` to read standard input; it
  is checked (a JSON object with a non-empty ``inputs`` list of named tensors) before anything is sent.
- ``--header NAME:VALUE`` (repeatable) goes with every request; ``--auth-token-file`` (or MODELPLANE_TOKEN)
  as ``Authorization: Bearer``; ``--tls-ca`` (and ``--tls-cert``/``--tls-key``) make it HTTPS.
- ``--sticky``: the gateway names the candidate an experiment with sticky sessions took in its
  ``x-modelplane-route`` answer header; it is printed (on standard error, so the answer stays JSON) and sent
  back with every later request (``--iterations``), so they all go to that candidate. To stay there across
  commands, pass it back yourself: ``--header x-modelplane-route:CANDIDATE``.
- ``--iterations N``: N requests one after another; prints latency percentiles (nearest rank), min, max,
  throughput and the routes taken instead of the answers. The first failed request ends the run (a figure
  mixing failures with answers would say nothing true about either).
- ``--grpc``: the same through the gateway's V2 gRPC endpoint (modelplane/cli/infer_grpc.py).
- ``pipeline inspect``: one request with ``x-modelplane-inspect: steps``, which makes the gateway add each step's
  input and output tensors to its answer (gateway/pipelines/step_trace.py): the steps run inside the gateway,
  so that is where they are seen.

Exit status as every command's: 2 for bad input (flags, ``--data``, or a request the gateway refused as
malformed: 400, 413), 1 when the work failed (no gateway there, an unknown name, a failing model), 0 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final, Protocol

import aiohttp

from gateway.pipelines.step_trace import INSPECT_HEADER, INSPECT_STEPS
from gateway.routing_table import ROUTE_HEADER
from modelplane.addresses import Address
from modelplane.auth_flags import add_client_token_flag, client_token
from modelplane.command_line import EXIT_FAILURE, EXIT_USAGE, fail
from modelplane.config import LayeredAppend, parse_layered
from modelplane.flag_types import MAX_CALL_SECONDS, bounded_int, peer_address, seconds
from modelplane.inference_limits import MAX_REQUEST_BODY_BYTES
from modelplane.spec.errors import InvalidArgument
from modelplane.spec.names import check_name
from modelplane.transport import TransportError, TransportSecurity, http_client_ssl
from modelplane.transport_flags import add_tls_flags, security_from

DEFAULT_GATEWAY: Final = "127.0.0.1:9000"
MAX_ITERATIONS: Final = 1_000_000
MAX_HEADERS: Final = 64
MAX_HEADER_BYTES: Final = 8 * 1024  # one header's name and value together, as common HTTP servers allow
# An answer larger than this is not read: a V2 answer is at most what a request may be, many times over.
MAX_ANSWER_BYTES: Final = 4 * MAX_REQUEST_BODY_BYTES
# Headers modelplane sets itself: one given with --header would contradict the request it sends.
RESERVED_HEADERS: Final = frozenset({"content-length", "content-type", "host", "transfer-encoding", "connection"})
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP header name (RFC 9110, "token")
_VALUE = re.compile(r"[\x20-\x7e\t]*")  # printable ASCII and tabs: what every server reads the same way
PERCENTILES: Final = (50, 90, 99)

# (group, action) of the commands this module runs: those that talk to a gateway (``model metadata``'s parser and
# answer are inventory_commands.py's; its transport is this module's).
COMMANDS: Final = frozenset(
    {("model", "infer"), ("pipeline", "infer"), ("experiment", "infer"), ("pipeline", "inspect"), ("model", "metadata")}
)


class InferError(Exception):
    """A failure to report as ``modelplane: error: ...`` with its exit status."""

    def __init__(self, message: str, exit_status: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_status = exit_status


# ----------------------------------------------------------------------------------------------- input


def header(text: str) -> tuple[str, str]:
    """``NAME:VALUE`` of ``--header``: an HTTP header name, a value of printable ASCII (spaces around it are
    dropped), at most MAX_HEADER_BYTES together."""
    name, colon, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not colon or not name:
        raise argparse.ArgumentTypeError(f"{_shown(text)} is not NAME:VALUE")
    if not _TOKEN.fullmatch(name):
        raise argparse.ArgumentTypeError(
            f"{_shown(name)} is not an HTTP header name (letters, digits, -_.!#$%&'*+^`|~)"
        )
    if not _VALUE.fullmatch(value):
        raise argparse.ArgumentTypeError(f"the value of {name} must be printable ASCII (no control characters)")
    if len(name) + len(value) > MAX_HEADER_BYTES:
        raise argparse.ArgumentTypeError(f"header {name} is longer than {MAX_HEADER_BYTES} bytes")
    if name.lower() in RESERVED_HEADERS:
        raise argparse.ArgumentTypeError(f"{name} is set by modelplane itself")
    return name, value


def resource_name(kind: str) -> Callable[[str], str]:
    """The NAME of ``KIND infer NAME``: a model, pipeline or experiment name as the scheduler allows it (a DNS
    label). It becomes a segment of the request's path, so anything else ('/', '?', '#', '%') would send the
    request somewhere other than the named resource (``model infer ../pipelines/p`` to pipeline p)."""

    def parse(text: str) -> str:
        try:
            return check_name(text, kind)
        except InvalidArgument as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


def _shown(text: str, limit: int = 60) -> str:
    """``text`` for an error message: quoted with escapes, cut short."""
    return repr(text[:limit] + ("..." if len(text) > limit else ""))


def read_data(data: str, stdin: IO[bytes] | None = None) -> bytes:
    """The request body ``--data`` gives: the JSON itself, ``@FILE``'s, or standard input's for ``-``; checked
    and re-encoded compactly. Anything wrong is bad input (InferError with exit status 2)."""
    if data == "-":
        try:
            raw = (stdin if stdin is not None else sys.stdin.buffer).read(MAX_REQUEST_BODY_BYTES + 1)
        except (OSError, ValueError, AttributeError) as error:  # closed, or no standard input at all
            raise InferError(f"--data -: cannot read standard input: {error}", EXIT_USAGE) from None
        where = "standard input"
    elif data.startswith("@"):
        path = Path(data[1:])
        try:
            with path.open("rb") as file:
                raw = file.read(MAX_REQUEST_BODY_BYTES + 1)
        except (OSError, ValueError) as error:  # ValueError: a NUL in the name
            reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
            raise InferError(f"--data: cannot read {_shown(str(path), 300)}: {reason}", EXIT_USAGE) from None
        where = str(path)
    else:
        raw, where = data.encode("utf-8", "surrogateescape"), ""
    if len(raw) > MAX_REQUEST_BODY_BYTES:
        raise InferError(f"--data {where}: larger than {MAX_REQUEST_BODY_BYTES} bytes".replace("  ", " "), EXIT_USAGE)
    source = f"--data ({where})" if where else "--data"
    try:
        body: Any = json.loads(raw)
    except UnicodeDecodeError as error:
        raise InferError(f"{source} is not UTF-8 text (byte {error.start})", EXIT_USAGE) from None
    except (ValueError, RecursionError) as error:
        raise InferError(f"{source} is not JSON: {error}", EXIT_USAGE) from None
    problem = _request_problem(body)
    if problem:
        raise InferError(
            f'{source} must be a V2 inference request: {{"inputs": [{{"name", "shape", "datatype", "data"}}, ...]}} '
            f"({problem})",
            EXIT_USAGE,
        )
    return json.dumps(body, separators=(",", ":")).encode()


def _request_problem(body: object) -> str | None:
    """Why ``body`` is no V2 request the gateway would route (its own first checks), or None."""
    if not isinstance(body, dict):
        return "not a JSON object"
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        return "'inputs' must be a non-empty list"
    for index, tensor in enumerate(inputs):
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            return f"inputs[{index}] must be an object with a string 'name'"
    return None


# ----------------------------------------------------------------------------------------------- the parsers


def add_infer_parser(actions: argparse._SubParsersAction[argparse.ArgumentParser], kind: str) -> None:
    """Add ``infer`` to a group's actions (``kind``: model, pipeline or experiment)."""
    parser = actions.add_parser(
        "infer",
        help=f"send a V2 inference request to a {kind} through the gateway and print the answer",
        description=f"Send a V2 inference request to {kind} NAME through the gateway (REST) and print the answer; "
        "with --iterations, latency percentiles instead.",
    )
    parser.add_argument("name", type=resource_name(kind), help=f"the {kind}'s name")
    _add_request_flags(parser, kind)
    parser.add_argument(
        "--sticky",
        action="store_true",
        help=f"print the route the gateway took ({ROUTE_HEADER}, sent by experiments with sticky sessions) and "
        "send it back with every later request",
    )
    parser.add_argument(
        "--grpc",
        action="store_true",
        help="use the gateway's V2 gRPC endpoint (modelplane gateway --grpc-listen) instead of REST: --gateway is "
        "then that address",
    )
    parser.add_argument(
        "--iterations",
        type=bounded_int(1, MAX_ITERATIONS),
        default=1,
        metavar="N",
        help="send N requests one after another and print latency percentiles (p50/p90/p99), min, max and "
        "throughput instead of the answers (default 1)",
    )


def add_inspect_parser(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``inspect`` to the pipeline group's actions."""
    parser = actions.add_parser(
        "inspect",
        help="send one request to a pipeline and show each step's inputs and outputs",
        description="Send one V2 request to pipeline NAME through the gateway, asking it (x-modelplane-inspect: "
        "steps) for the tensors each step received and answered, and print them with the pipeline's answer.",
    )
    parser.add_argument("name", type=resource_name("pipeline"), help="the pipeline's name")
    _add_request_flags(parser, "pipeline")


def _add_request_flags(parser: argparse.ArgumentParser, section: str) -> None:
    parser.add_argument(
        "--data",
        required=True,
        metavar="JSON|@FILE|-",
        help='the V2 request: JSON ({"inputs": [...]}), @FILE to read it from a file, - from standard input',
    )
    add_gateway_flags(parser, section)
    parser.add_argument(
        "--output", choices=("json", "table"), default="json", help="how to print the answer (default json)"
    )


def add_gateway_flags(parser: argparse.ArgumentParser, section: str) -> None:
    """The flags of every command that talks to a gateway: where it is, how (TLS, token), extra headers."""
    parser.add_argument(
        "--header",
        type=header,
        action=LayeredAppend,
        default=[],
        metavar="NAME:VALUE",
        help="an HTTP header to send with the request (repeatable)",
    )
    parser.add_argument(
        "--gateway",
        type=peer_address,
        default=DEFAULT_GATEWAY,
        metavar="HOST:PORT",
        help=f"the gateway's V2 REST address (default {DEFAULT_GATEWAY}, as `modelplane up` serves it; "
        "env MODELPLANE_GATEWAY)",
    )
    parser.add_argument(
        "--timeout", type=seconds(MAX_CALL_SECONDS), default=10.0, metavar="SECONDS", help="per-request deadline"
    )
    parser.add_argument("--config", metavar="FILE", help=f"TOML settings file ([{section}] table)")
    add_tls_flags(parser, server=False)
    add_client_token_flag(parser, presented_to="the gateway")


# ----------------------------------------------------------------------------------------------- the calls


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    reason: str
    body: bytes
    route: str | None  # the x-modelplane-route header, if the gateway sent one


@dataclass
class Gateway:
    """One gateway, one connection pool, the headers every request carries."""

    address: Address
    session: aiohttp.ClientSession
    scheme: str
    headers: dict[str, str] = field(default_factory=dict)

    async def call(
        self, method: str, path: str, body: bytes | None = None, headers: Mapping[str, str] | None = None
    ) -> Answer:
        url = f"{self.scheme}://{self.address}{path}"
        sent = {**self.headers, **(headers or {})}
        if body is not None:
            sent["Content-Type"] = "application/json"
        try:
            async with self.session.request(method, url, data=body, headers=sent) as response:
                raw = await _read_bounded(response)
                return Answer(response.status, response.reason or "", raw, response.headers.get(ROUTE_HEADER))
        except aiohttp.ClientConnectorError as error:
            raise InferError(
                f"cannot reach the gateway at {self.address}: is `modelplane gateway` or `modelplane up` running "
                f"there? ({error.os_error.strerror or error})"
            ) from None
        except TimeoutError:
            raise InferError(f"the gateway at {self.address} did not answer within the deadline (--timeout)") from None
        except aiohttp.ClientError as error:
            raise InferError(f"the request to the gateway at {self.address} failed: {error}") from None


async def _read_bounded(response: aiohttp.ClientResponse) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise InferError(f"the gateway's answer is larger than {MAX_ANSWER_BYTES} bytes; not read")
        chunks.append(chunk)
    return b"".join(chunks)


def _refusal(address: Address, answer: Answer) -> InferError:
    """An error answer in words: the gateway's own reason (its ``{"error": ...}``), exit 2 when it refused the
    request itself as malformed or too large."""
    try:
        document: Any = json.loads(answer.body)
        detail = document.get("error", document) if isinstance(document, dict) else document
    except ValueError:
        detail = answer.body[:500].decode("utf-8", "replace").strip() or "(no reason given)"
    status = EXIT_USAGE if answer.status in (400, 413) else EXIT_FAILURE
    return InferError(f"gateway at {address} answered {answer.status} {answer.reason}: {detail}", status)


def _document(address: Address, answer: Answer) -> dict[str, Any]:
    try:
        document: Any = json.loads(answer.body)
    except ValueError as error:
        raise InferError(f"the gateway at {address} answered something that is not JSON: {error}") from None
    if not isinstance(document, dict):
        raise InferError(f"the gateway at {address} answered JSON that is not an object")
    return document


async def _infer_path(gateway: Gateway, kind: str, name: str) -> str:
    """Where requests for ``name`` go. An experiment is over models or pipelines, and the gateway serves each kind
    on its own path: its model readiness route says which (404: no model or experiment over models by that
    name)."""
    if kind == "model":
        return f"/v2/models/{name}/infer"
    if kind == "pipeline":
        return f"/v2/pipelines/{name}/infer"
    ready = await gateway.call("GET", f"/v2/models/{name}/ready")
    if ready.status != 404:
        return f"/v2/models/{name}/infer"
    ready = await gateway.call("GET", f"/v2/pipelines/{name}/ready")
    if ready.status == 404:
        raise InferError(f"the gateway at {gateway.address} knows no experiment {name!r} (nor model or pipeline)")
    return f"/v2/pipelines/{name}/infer"


def percentile(ordered: Sequence[float], percent: float) -> float:
    """The nearest-rank percentile of ``ordered`` (sorted, not empty): a latency some request really had."""
    rank = max(1, math.ceil(percent / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class RunFigures:
    requests: int
    seconds: float
    latencies: list[float]  # seconds, one per request
    routes: Counter[str]

    def document(self) -> dict[str, Any]:
        ordered = sorted(self.latencies)
        latency = {"min": ordered[0], **{f"p{p}": percentile(ordered, p) for p in PERCENTILES}, "max": ordered[-1]}
        return {
            "requests": self.requests,
            "seconds": round(self.seconds, 6),
            "throughput_per_second": round(self.requests / self.seconds, 3) if self.seconds > 0 else None,
            "latency_ms": {key: round(value * 1000, 3) for key, value in latency.items()},
            "routes": dict(sorted(self.routes.items())),
        }


class Sender(Protocol):
    """Sends the command's one request to the gateway (REST or gRPC): its answer, or InferError."""

    @property
    def address(self) -> Address: ...

    async def send(self, extra: Mapping[str, str]) -> Answer: ...


@dataclass(frozen=True)
class RestSender:
    gateway: Gateway
    path: str
    body: bytes

    @property
    def address(self) -> Address:
        return self.gateway.address

    async def send(self, extra: Mapping[str, str]) -> Answer:
        answer = await self.gateway.call("POST", self.path, self.body, extra)
        if answer.status != 200:
            raise _refusal(self.gateway.address, answer)
        return answer


async def infer(sender: Sender, kind: str, name: str, *, sticky: bool, iterations: int, output: str) -> str:
    extra: dict[str, str] = {}
    if iterations == 1:
        answer = await sender.send(extra)
        document = _document(sender.address, answer)
        if sticky:
            _say_route(answer.route, name)
        return _render_answer(document, answer.route, output)
    latencies: list[float] = []
    routes: Counter[str] = Counter()
    announced = False  # the route (or its absence) is said once, after the first answer
    started = time.perf_counter()
    for number in range(1, iterations + 1):
        sent = time.perf_counter()
        try:
            answer = await sender.send(extra)
        except InferError as error:
            raise InferError(f"request {number} of {iterations} failed: {error}", error.exit_status) from None
        latencies.append(time.perf_counter() - sent)
        if answer.route is not None:
            routes[answer.route] += 1
        if sticky and not announced:
            announced = True
            _say_route(answer.route, name)
            if answer.route is not None:
                extra = {ROUTE_HEADER: answer.route}
    figures = RunFigures(iterations, time.perf_counter() - started, latencies, routes)
    return _render_figures(figures, kind, name, sender.address, output)


def _say_route(route: str | None, name: str) -> None:
    if route is None:
        print(
            f"modelplane: the gateway named no route ({ROUTE_HEADER}): {name} is not an experiment with sticky "
            "sessions (config.stickySessions)",
            file=sys.stderr,
        )
    else:
        print(f"{ROUTE_HEADER}: {route}", file=sys.stderr)


async def inspect(gateway: Gateway, name: str, body: bytes, output: str) -> str:
    answer = await RestSender(gateway, f"/v2/pipelines/{name}/infer", body).send({INSPECT_HEADER: INSPECT_STEPS})
    document = _document(gateway.address, answer)
    if not isinstance(document.get("steps"), list):
        raise InferError(
            f"the gateway at {gateway.address} answered without the steps' tensors: it is older than this command "
            f"(it does not know {INSPECT_HEADER})"
        )
    if output == "json":
        return json.dumps(document, indent=2)
    lines: list[str] = []
    for entry in document["steps"]:
        step = entry if isinstance(entry, dict) else {}
        cancelled = "  (cancelled: the output was complete)" if step.get("cancelled") else ""
        lines.append(f"step {step.get('step')} (model {step.get('model')}){cancelled}")
        lines.extend(_tensor_rows(step.get("inputs"), "  in   "))
        lines.extend(_tensor_rows(step.get("outputs"), "  out  "))
    lines.append(f"pipeline {name} output")
    lines.extend(_tensor_rows(document.get("outputs"), "  out  "))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- printing


def _render_answer(document: dict[str, Any], route: str | None, output: str) -> str:
    if output == "json":
        return json.dumps(document, indent=2)
    lines = [f"model {document.get('model_name', '-')}  version {document.get('model_version', '-')}"]
    if route is not None:
        lines[0] += f"  route {route}"
    lines.extend(_tensor_rows(document.get("outputs"), ""))
    return "\n".join(lines)


def _tensor_rows(tensors: object, prefix: str) -> list[str]:
    if not isinstance(tensors, list):
        return []
    rows = []
    for tensor in tensors:
        if not isinstance(tensor, dict):
            continue
        data = json.dumps(tensor.get("data"), separators=(",", ":"))
        data = data if len(data) <= 80 else data[:77] + "..."
        shape = json.dumps(tensor.get("shape"), separators=(",", ":"))
        rows.append(f"{prefix}{tensor.get('name', '?')!s:<20} {tensor.get('datatype', '?')!s:<6} {shape:<12} {data}")
    return rows


def _render_figures(figures: RunFigures, kind: str, name: str, address: Address, output: str) -> str:
    document = figures.document()
    if output == "json":
        return json.dumps(document, indent=2)
    latency = document["latency_ms"]
    lines = [
        f"requests     {figures.requests} to {kind} {name} through {address}",
        "latency ms   " + "  ".join(f"{key} {value:g}" for key, value in latency.items()),
        f"throughput   {document['throughput_per_second']} requests/s",
    ]
    if figures.routes:
        lines.append("routes       " + ", ".join(f"{route} {count}" for route, count in document["routes"].items()))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- the command


def run(parser: argparse.ArgumentParser, group: str, action: str, argv: Sequence[str]) -> int:
    """Run ``modelplane GROUP ACTION ARGV`` for one of COMMANDS; its exit status."""
    options = parse_layered(parser, group, argv)
    if len(options.header) > MAX_HEADERS:
        parser.error(f"at most {MAX_HEADERS} --header flags")
    try:
        body = read_data(options.data) if action != "metadata" else b""
        security = security_from(options)
        gateway_address: Address = options.gateway
        presented = client_token(options.auth_token_file)
        token = presented.current() if presented is not None else None
        print(asyncio.run(_job(group, action, options, body, security=security, address=gateway_address, token=token)))
    except TransportError as error:
        return fail(str(error), EXIT_USAGE)
    except InferError as error:
        return fail(str(error), error.exit_status)
    return 0


async def _job(
    group: str,
    action: str,
    options: argparse.Namespace,
    body: bytes,
    *,
    security: TransportSecurity,
    address: Address,
    token: str | None,
) -> str:
    security.validate()
    if not security.uses_tls and not security.insecure and not address.is_loopback:
        raise TransportError(
            f"refusing plaintext HTTP to the gateway at {address}: give --tls-ca (HTTPS), or --insecure to accept "
            "plaintext"
        )
    if getattr(options, "grpc", False):
        from modelplane.cli.infer_grpc import GrpcSender  # noqa: PLC0415 - the gRPC client only when asked for

        headers = {key.lower(): value for key, value in options.header}
        opened = GrpcSender.open(
            address,
            security=security,
            token=token,
            name=options.name,
            body=body,
            headers=headers,
            timeout=options.timeout,
        )
        async with opened as grpc_sender:
            return await _infer_as_asked(grpc_sender, group, options)
    context = http_client_ssl(security.ca_file, security.cert_file, security.key_file)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    headers.update(dict(options.header))  # given last: a header of the caller's wins
    timeout = aiohttp.ClientTimeout(total=options.timeout)
    connector = aiohttp.TCPConnector(ssl=context if context is not None else True)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        gateway = Gateway(address, session, "https" if security.uses_tls else "http", headers)
        if action == "inspect":
            return await inspect(gateway, options.name, body, options.output)
        if action == "metadata":
            from modelplane.cli.inventory_commands import model_metadata  # noqa: PLC0415 - it imports this module

            return await model_metadata(gateway, options.name, options.output)
        sender = RestSender(gateway, await _infer_path(gateway, group, options.name), body)
        return await _infer_as_asked(sender, group, options)


async def _infer_as_asked(sender: Sender, group: str, options: argparse.Namespace) -> str:
    """``infer`` with the command's flags, over REST or gRPC."""
    return await infer(
        sender, group, options.name, sticky=options.sticky, iterations=options.iterations, output=options.output
    )
