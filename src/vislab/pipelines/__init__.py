"""What each command does, as library functions: the CLI only parses and calls these."""
