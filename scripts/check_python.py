"""Exit 1 with one line when this interpreter is not one of the Python versions given (``make setup`` uses it).

    python3 scripts/check_python.py 3.11 3.12
"""

import sys

if __name__ == "__main__":
    supported = sys.argv[1:]
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    if version not in supported:
        print(f"make setup: Python {version} ({sys.executable}) is not a supported version ({', '.join(supported)}); "
              f"run with one of them, e.g. make setup PYTHON=python{supported[0]}", file=sys.stderr)
        sys.exit(1)
