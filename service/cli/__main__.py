"""`python -m service.cli ...`: the `simrating` command."""

from service.cli.main import main

main()
