"""Compile the relay program: ``python3 -m turnd.fastpath.build``, or ``python3
turnd/fastpath/build.py`` with a bare python3 (scripts/run and scripts/test do, before installing,
when clang is there). It imports nothing of turnd, so it runs before any package is installed.

clang turns relay.bpf.c into relay.bpf.o next to it, a BPF object with BTF (CO-RE: libbpf
adapts it to the running kernel at load; the program reads only the stable ``__sk_buff`` UAPI,
so it needs no kernel headers of its own). The headers come from Debian's libbpf-dev and
linux-libc-dev.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
from pathlib import Path

SOURCE = Path(__file__).with_name("relay.bpf.c")
OBJECT = Path(__file__).with_name("relay.bpf.o")
#: Debian keeps <asm/types.h> under the multiarch directory, which clang -target bpf does not
#: search by itself.
MULTIARCH = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu"}


class BuildError(Exception):
    """The object could not be built; the message says why and what to install."""


def command(clang: str, output: Path = OBJECT) -> list[str]:
    """The clang command line that builds ``output``."""
    multiarch = MULTIARCH.get(platform.machine(), f"{platform.machine()}-linux-gnu")
    return [
        clang,
        "-O2",
        "-g",
        "-Wall",
        "-Werror",
        "-Wno-pass-failed",
        "-target",
        "bpf",
        f"-I/usr/include/{multiarch}",
        "-c",
        str(SOURCE),
        "-o",
        str(output),
    ]


def build(output: Path = OBJECT) -> Path:
    """Compile relay.bpf.c into ``output``; BuildError when clang or the headers are missing."""
    clang = shutil.which("clang")
    if clang is None:
        raise BuildError("clang is not installed (Debian: apt-get install clang libbpf-dev)")
    if not Path("/usr/include/bpf/bpf_helpers.h").exists():
        raise BuildError("libbpf's headers are missing (Debian: apt-get install libbpf-dev)")
    done = subprocess.run(command(clang, output), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BuildError(f"clang failed:\n{done.stderr.strip()}")
    return output


def main() -> int:
    """Build the object; exit 1 with the reason when it cannot be built."""
    try:
        sys.stdout.write(f"built {build()}\n")
    except BuildError as exc:
        sys.stderr.write(f"turnd fast path not built: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
