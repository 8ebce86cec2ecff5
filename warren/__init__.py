"""Runs the whole Warren system on one machine (`python -m warren run`)."""
