import sys

from kubectl_mesh.cli import main

sys.exit(main())
