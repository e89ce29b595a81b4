import sys

from helical_runner.cli import main

sys.exit(main())
