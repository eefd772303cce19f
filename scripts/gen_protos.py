"""Generate generated/ from proto/: message classes, gRPC stubs and mypy-protobuf type stubs.

    python scripts/gen_protos.py            # regenerate generated/ in place
    python scripts/gen_protos.py --check    # regenerate into a temporary folder; exit 1 if it differs

protoc writes imports relative to the proto root (``from mlops.chainer import chainer_pb2``). The
generated modules live in the ``generated`` package, so this script rewrites those imports to
``generated.mlops...``: the output then imports as an ordinary installed package, with no sys.path
tricks. The output is byte-for-byte reproducible for pinned grpcio-tools and mypy-protobuf (see
pyproject.toml), which is what --check relies on.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

REPO = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO / "proto"
OUTPUT = REPO / "generated"
PACKAGE = "generated"

PACKAGE_DOC = '"""protoc output for proto/. Written by scripts/gen_protos.py; never edit by hand."""\n'

# Top-level proto folders under proto/ whose imports are rewritten (inference/: the V2 inference protocol).
_TOP_LEVEL = "mlops|inference"
_IMPORT_PATTERNS = (
    (re.compile(rf"^from ({_TOP_LEVEL})(\.| import )", re.MULTILINE), rf"from {PACKAGE}.\1\2"),
    (re.compile(rf"^import ({_TOP_LEVEL})\.", re.MULTILINE), rf"import {PACKAGE}.\1."),
    # The module name protoc records for the message classes (their __module__, used by pickle).
    (re.compile(rf"(BuildTopDescriptorsAndMessages\(DESCRIPTOR, ')({_TOP_LEVEL})\."), rf"\1{PACKAGE}.\2."),
)


def proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.rglob("*.proto"))


def run_protoc(out: Path) -> None:
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    bin_dir = Path(sys.executable).parent
    args = [
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--proto_path={well_known}",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out=quiet:{out}",
        f"--mypy_grpc_out=quiet:{out}",
        *(str(path.relative_to(PROTO_ROOT)) for path in proto_files()),
    ]
    status = protoc.main(args)
    if status != 0:
        raise SystemExit(f"protoc failed with exit status {status}")


def rewrite_imports(out: Path) -> None:
    for path in sorted(out.rglob("*.py*")):
        text = path.read_text()
        for pattern, replacement in _IMPORT_PATTERNS:
            text = pattern.sub(replacement, text)
        path.write_text(text)


def add_package_files(out: Path) -> None:
    (out / "py.typed").write_text("")
    for folder in [out, *sorted(p for p in out.rglob("*") if p.is_dir())]:
        (folder / "__init__.py").write_text(PACKAGE_DOC)


def generate(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    run_protoc(out)
    rewrite_imports(out)
    add_package_files(out)


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in root.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


def differences(fresh: Path, committed: Path) -> list[str]:
    """Relative paths that differ between fresh output and the committed folder, with why."""
    new, old = _files(fresh), _files(committed)
    found = [f"{name} (missing from generated/)" for name in sorted(new.keys() - old.keys())]
    found += [f"{name} (not produced by the protos)" for name in sorted(old.keys() - new.keys())]
    found += [f"{name} (content differs)" for name in sorted(new.keys() & old.keys()) if new[name] != old[name]]
    return found


def check() -> int:
    with tempfile.TemporaryDirectory(prefix="modelplane-gen-") as tmp:
        fresh = Path(tmp) / PACKAGE
        generate(fresh)
        stale = differences(fresh, OUTPUT) if OUTPUT.is_dir() else ["generated/ (missing)"]
        if stale:
            print("generated/ is stale; run scripts/gen_protos.py and commit the result:", file=sys.stderr)
            for path in stale:
                print(f"  {path}", file=sys.stderr)
            return 1
    print(f"generated/ is up to date ({len(proto_files())} proto files)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if generated/ differs from fresh output")
    options = parser.parse_args()
    if options.check:
        return check()
    with tempfile.TemporaryDirectory(prefix="modelplane-gen-") as tmp:
        fresh = Path(tmp) / PACKAGE
        generate(fresh)
        shutil.rmtree(OUTPUT, ignore_errors=True)
        shutil.copytree(fresh, OUTPUT)
    print(f"wrote {OUTPUT.relative_to(REPO)}/ from {len(proto_files())} proto files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
