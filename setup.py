"""Build: generate the gRPC stubs from proto/ and compile the Cython kernels in ext/.

The repository keeps one folder per room (see ARCHITECTURE.md) and installs each as a subpackage of
`iotstream`; the generated `*_pb2*.py` land in proto/iotstream/v1 as `iotstream.v1`.
"""

from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

ROOT = Path(__file__).parent
PROTO_DIR = ROOT / "proto"
STUB_DIR = PROTO_DIR / "iotstream" / "v1"


def generate_stubs() -> None:
    from grpc_tools import protoc  # build-time dependency (pyproject [build-system])

    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in STUB_DIR.glob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={PROTO_DIR}",
        f"--pyi_out={PROTO_DIR}",
        f"--grpc_python_out={PROTO_DIR}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {protos}")
    (STUB_DIR / "__init__.py").write_text('"""Generated protobuf and gRPC stubs (not committed)."""\n')


# Every build (wheel, sdist, editable) runs this file, so the stubs exist before packages are collected.
generate_stubs()

extensions = [
    # one source, also run uncompiled as the reference (Cython pure-Python mode; see ext/rolling.py)
    Extension("iotstream.ext.rolling", ["ext/rolling.py"], extra_compile_args=["-O3"]),
]

# Every top-level folder is one room of the `iotstream` package; the package root is proto/iotstream, so no
# folder named `iotstream` sits in the checkout to shadow the installed package.
ROOMS = [
    "ingest",
    "processor",
    "ext",
    "clickhouse",
    "query",
    "auth",
    "bus",
    "node",
    "cli",
    "client",
    "common",
    "console",
    "alerts",
    "bench",
]

setup(
    packages=[
        "iotstream",
        "iotstream.v1",
        *(f"iotstream.{room}" for room in ROOMS),
        "iotstream.bench.ghz",
        "iotstream.bench.profile",
    ],
    package_dir={"iotstream": "proto/iotstream", **{f"iotstream.{room}": room for room in ROOMS}},
    package_data={
        "iotstream": ["py.typed"],
        "iotstream.v1": ["*.proto", "*.pyi"],
        "iotstream.clickhouse": ["schema/*.sql"],
        "iotstream.ext": ["*.pyi", "*.pxd"],
        "iotstream.bench": ["setup", "kafka-local"],
        "iotstream.bench.ghz": ["*.json"],
        "iotstream.console": ["static/*", "static/uplot/*"],
    },
    # include_path: Cython finds ext/iotstream.ext.rolling.pxd (augmenting ext/rolling.py) by its dotted name
    ext_modules=cythonize(
        extensions, language_level=3, include_path=["ext"], compiler_directives={"embedsignature": True}
    ),
)
