import sys

from biocls.cli import main

sys.exit(main())
