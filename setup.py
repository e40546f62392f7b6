"""The package's one build step beyond setup.cfg: replication._dataplane, the FUSE
layer's hot requests in C (issue 19 item 3; replication/_dataplane.c says why).

It needs a C compiler, Python's headers and libfuse 3's (Debian: gcc python3-dev
pkg-config libfuse3-dev, all in the Makefile's package lists). It is optional: where it
cannot be built the install goes on with a warning and the mount serves every request
in Python (one log line says so); the tests that need it say why they skip.
"""
import shlex
import subprocess

from setuptools import Extension, setup


def pkg_config(*args: str) -> list[str]:
    try:
        out = subprocess.run(["pkg-config", *args, "fuse3"], check=True, capture_output=True,
                             text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    return shlex.split(out)


setup(ext_modules=[Extension(
    "replication._dataplane", ["replication/_dataplane.c"],
    depends=["replication/_lowlevel.c"],   # included by _dataplane.c
    extra_compile_args=["-O2", "-Wall", "-Wextra", *pkg_config("--cflags")],
    extra_link_args=pkg_config("--libs"),
    optional=True,
)])
