"""``python -m kd_helpers``: see :mod:`kd_helpers.cli`."""

from kd_helpers.cli import main

raise SystemExit(main())
