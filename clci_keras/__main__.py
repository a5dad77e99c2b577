import sys

from clci_keras.cli import main

if __name__ == "__main__":
    sys.exit(main())
