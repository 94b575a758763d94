import sys

from ft_cli.cli import main

sys.exit(main())
