import sys

from easeml_buildbot.cli import main

sys.exit(main())
