"""The gRPC contract: where the ``.proto`` files are and how the Python
modules of package ``touchstream.v1`` are generated from them.

The generated modules are committed beside the ``.proto`` files (in
``proto/touchstream/v1/``, installed as the ``touchstream.v1`` package);
``./dev proto`` writes them again after a change, and a test checks that
they match what the committed ``.proto`` files give.
"""

from __future__ import annotations

from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent.parent / "proto"
PACKAGE_DIR = PROTO_ROOT / "touchstream" / "v1"
SERVICES = ("ingest", "interventions", "customers")


def proto_files() -> list[Path]:
    """Every ``.proto`` file of the contract, sorted."""
    return sorted(PACKAGE_DIR.glob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Write the ``_pb2``, ``_pb2.pyi`` and ``_pb2_grpc`` modules into
    `out_dir` (its ``touchstream/v1`` folder) and return them.

    Needs grpcio-tools, a test dependency: the installed package carries
    the generated modules.
    """
    from grpc_tools import protoc  # type: ignore[import-untyped]

    out_dir.mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).parent / "_proto"
    files = [str(path.relative_to(PROTO_ROOT)) for path in proto_files()]
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            *files,
        ]
    )
    if status != 0:
        msg = f"protoc failed with status {status} on {', '.join(files)}"
        raise RuntimeError(msg)
    return sorted((out_dir / "touchstream" / "v1").glob("*_pb2*.py*"))


if __name__ == "__main__":
    for path in generate(PROTO_ROOT):
        print(path.relative_to(PROTO_ROOT))
