"""`warren`, the customers' command line for Warren's API (/api/v1/, docs/api.md).
Imports the standard library only: it runs where the shop's code is not installed."""
