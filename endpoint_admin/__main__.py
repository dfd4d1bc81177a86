import sys

from endpoint_admin.cli import main

sys.exit(main())
