import sys

from streamsvc.client.cli import main

sys.exit(main())
