"""``python -m xda_hybrid`` runs the ``xda-hybrid`` command line."""
import sys

from .cli import main

sys.exit(main())
