"""``python -m ssl_domains`` is the ``ssl-domains`` command."""

import sys

from .cli import main

sys.exit(main())
