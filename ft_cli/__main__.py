import sys

from ft_cli.cli.app import main

sys.exit(main())
