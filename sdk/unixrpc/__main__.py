"""``python -m unixrpc``: the ``unixrpc`` command (see :mod:`unixrpc.cli`)."""

import sys

from .cli import main

sys.exit(main())
