"""``python -m nasfcos`` is the same as the ``nasfcos`` command."""

import sys

from nasfcos.cli.main import main

sys.exit(main())
