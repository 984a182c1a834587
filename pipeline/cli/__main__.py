"""``python -m speechpipe.pipeline.cli``."""

import sys

from speechpipe.pipeline.cli.main import main

sys.exit(main())
