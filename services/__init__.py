"""Example services that really run: ``rpc-worker services.calculator``."""
