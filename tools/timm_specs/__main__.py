"""python -m tools.timm_specs"""

import sys

from tools.timm_specs import main

sys.exit(main(sys.argv[1:]))
