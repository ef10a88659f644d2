import sys

from jaxlearn.cli import main

sys.exit(main())
