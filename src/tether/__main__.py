"""``python -m tether`` runs the ``tether`` command."""

from ._cli import main

raise SystemExit(main())
