"""``python -m eartalk`` runs the command line interface."""

from eartalk.core.cli import main

raise SystemExit(main())
