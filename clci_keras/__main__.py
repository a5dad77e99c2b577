import sys

from clci_keras.cli import main

sys.exit(main())
