"""The runtime front shared by every backend (torch-free where it can be)."""
