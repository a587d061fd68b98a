"""Print the requirements of pyproject.toml's extras, one a line, less the packages named after
--without: `make test-pythons` installs the dev extra this way on free-threaded Pythons, where
mypy cannot be installed (its ast-serialize needs Rust to build there).

    python tools/requirements.py dev [demo ...] [--without mypy ...]
"""

import re
import sys
import tomllib
from pathlib import Path


def main(argv: list[str]) -> int:
    extras, without = argv, []
    if "--without" in argv:
        i = argv.index("--without")
        extras, without = argv[:i], argv[i + 1 :]
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    table = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    skip = {re.sub(r"[-_.]+", "-", name).lower() for name in without}
    for extra in extras:
        for req in table[extra]:
            name = re.match(r"[A-Za-z0-9._-]+", req)
            if name and re.sub(r"[-_.]+", "-", name.group()).lower() not in skip:
                print(req)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
