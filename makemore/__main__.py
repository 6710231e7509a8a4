"""`python -m makemore ...`: the same entry point as the `makemore` command."""
import sys

from .cli import main

sys.exit(main())
