"""Point the ROS 2 wheels' exported CMake files at this interpreter's real include folders.

The ros-*-msgs wheels on PyPI were built under /opt/python/cp311-cp311 and their exported
targets (share/<pkg>/cmake/export_<pkg>__rosidl_generator_pyExport.cmake) name
/opt/python/cp311-cp311/include/python3.11 and .../site-packages/numpy/_core/include as
INTERFACE_INCLUDE_DIRECTORIES. Those folders do not exist here, and CMake refuses a target
with a missing include folder, so building our own messages against them fails. This script
rewrites the two paths to the running interpreter's Python include folder and numpy's include
folder. It is idempotent: a second run finds nothing to change.

Usage: <venv>/bin/python tools/fix_ros_wheel_paths.py [PREFIX]   (PREFIX defaults to sys.prefix)
"""

import pathlib
import sys
import sysconfig

BUILD_ROOT = "/opt/python/cp311-cp311"


def replacements() -> list[tuple[str, str]]:
    """(old, new) path pairs, most specific first: numpy's include, then Python's include."""
    import numpy

    python_tag = f"python{sys.version_info.major}.{sys.version_info.minor}"
    return [
        (f"{BUILD_ROOT}/lib/{python_tag}/site-packages/numpy/_core/include", numpy.get_include()),
        (f"{BUILD_ROOT}/include/{python_tag}", sysconfig.get_paths()["include"]),
    ]


def fix_file(path: pathlib.Path, pairs: list[tuple[str, str]]) -> bool:
    """Rewrite the build paths in one file; True when the file changed."""
    text = path.read_text()
    fixed = text
    for old, new in pairs:
        fixed = fixed.replace(old, new)
    if fixed == text:
        return False
    path.write_text(fixed)
    return True


def main(argv: list[str]) -> int:
    prefix = pathlib.Path(argv[1] if len(argv) > 1 else sys.prefix)
    share = prefix / "share"
    if not share.is_dir():
        print(f"fix_ros_wheel_paths: {share} does not exist (ROS wheels not installed?)", file=sys.stderr)
        return 1
    pairs = replacements()
    changed = [path for path in sorted(share.glob("*/cmake/*.cmake")) if fix_file(path, pairs)]
    left = [path for path in share.glob("*/cmake/*.cmake") if BUILD_ROOT in path.read_text()]
    print(f"fix_ros_wheel_paths: rewrote {len(changed)} file(s) under {share}")
    if left:
        print(f"fix_ros_wheel_paths: {BUILD_ROOT} still named in: {', '.join(map(str, left))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
