"""`python -m splitlib`: the command line (see splitlib.cli)."""
from .cli import main

raise SystemExit(main())
