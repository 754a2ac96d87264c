"""Reference PyTorch VILA: the oracle every faster path is checked against."""
