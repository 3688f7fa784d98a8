"""`python -m brewmeter.cloud [options]`: the same as `brewmeter cloud`."""

import sys

from brewmeter.cloud.server import cloud_main

sys.exit(cloud_main(sys.argv[1:]))
