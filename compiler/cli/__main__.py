"""`python -m compiler.cli`: the `npuc` command without the installed script."""

import sys

from compiler.cli import main

sys.exit(main())
