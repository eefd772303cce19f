"""CPU per pipeline request of the gateway's own work, without sockets: steadier than a p50 on a shared machine.

One process runs the pipeline ``abc`` of bench/gateway_inference.py (``pa -> pb, pa -> pc, join``) through the
gateway's executor, with the JSON work the gateway does around it: the request body parsed and checked as the
REST edge does (``parse_request``), each step's request written as the router does (``encode_request``) and its
answer read (``RoutedAnswer.json``: MLServer's answers for 2 rows, as recorded), the pipeline's answer written.
What it leaves out is everything with a socket: aiohttp's server, the hop client, the event loop's reads and
``send()`` (bench/gateway_inference.py measures those, with real processes).

``--tree DIR`` imports the gateway from another checkout (an export of main: ``git archive main | tar -x -C
DIR``), so two trees compare with one command each, in turns.

    .venv/bin/python bench/pipeline_executor_cpu.py [--requests 3000] [--repeats 5] [--tree DIR] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]


def answer(model: str, datatype: str, data: list[Any]) -> bytes:
    """A V2 answer as MLServer writes it for the bench's models (compact, model_name first)."""
    tensor = {"name": "predict", "shape": [len(data), 1], "datatype": datatype, "data": data}
    document = {"model_name": f"{model}_1", "id": "x", "parameters": {}, "outputs": [tensor]}
    return json.dumps(document, separators=(",", ":")).encode()


ANSWERS = {
    "pa": answer("pa", "INT64", [0, 2]),
    "pb": answer("pb", "FP64", [1.0, 5.0]),
    "pc": answer("pc", "INT64", [1, 0]),
}
BODY = json.dumps({"inputs": [{"name": "predict", "shape": [2, 4], "datatype": "FP64", "data": ROWS}]}).encode()


async def measure(requests: int, repeats: int) -> dict[str, Any]:
    # Imported here: --tree decides where from.
    router = importlib.import_module("gateway.inference_router")
    executor_module = importlib.import_module("gateway.pipelines.executor")
    documents = importlib.import_module("gateway.json_documents")
    pipeline_models = importlib.import_module("tests.support.pipeline_models")
    encode = getattr(documents, "dumps", None) or (lambda document: json.dumps(document).encode())

    async def call_model(name: str, request: dict[str, Any], headers: Mapping[str, str]) -> dict[str, Any]:
        router.encode_request(request)
        await asyncio.sleep(0)  # the step's answer arrives in a later turn of the loop, as from a socket
        parsed: dict[str, Any] = router.RoutedAnswer(200, ANSWERS[name]).json()
        return parsed

    executor = executor_module.PipelineExecutor(pipeline_models.three_step_pipeline("abc"), timeout_s=60.0)

    async def one() -> bytes:
        response = await executor.execute(router.parse_request(BODY), call_model, {})
        written: bytes = encode(response)
        return written

    first = json.loads(await one())
    for _ in range(200):  # warm-up
        await one()
    per_request_us: list[float] = []
    for _ in range(repeats):
        started = time.process_time()
        for _ in range(requests):
            await one()
        per_request_us.append(round((time.process_time() - started) / requests * 1e6, 1))
    return {"per_request_us": per_request_us, "min_us": min(per_request_us), "answer": first}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="CPU per pipeline request of the gateway's own work.")
    parser.add_argument("--requests", type=int, default=3000, help="requests per repeat (default 3000)")
    parser.add_argument("--repeats", type=int, default=5, help="repeats; each one's figure is reported")
    parser.add_argument("--tree", type=Path, help="import the gateway from this checkout instead")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the result as JSON here")
    options = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if not (1 <= options.requests <= 1_000_000 and 1 <= options.repeats <= 100):
        parser.error("--requests 1..1000000, --repeats 1..100")
    tree = (options.tree or REPO).resolve()
    sys.path.insert(0, str(tree))
    result: dict[str, Any] = {"tree": str(tree), "loadavg_start": os.getloadavg()[0]}
    result |= asyncio.run(measure(options.requests, options.repeats))
    result["loadavg_end"] = os.getloadavg()[0]
    outputs = {tensor["name"]: tensor["data"] for tensor in result["answer"]["outputs"]}
    print(f"{tree}: CPU us per pipeline request {result['per_request_us']} (min {result['min_us']}); {outputs}")
    if options.json is not None:
        options.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
