import sys

from meshpeer.lab.cli import main

sys.exit(main())
