"""``python -m tests.kit.kubeemu``: see ``server.main``."""

from .server import main

raise SystemExit(main())
