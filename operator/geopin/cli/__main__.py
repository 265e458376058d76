"""``python -m geopin.cli``: the same command as the ``geopin`` console script."""

import logging
import sys

from geopin.cli.main import main

logging.basicConfig()
sys.exit(main())
