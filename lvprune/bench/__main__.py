import sys

from lvprune.bench.cli import main

sys.exit(main())
