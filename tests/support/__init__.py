"""Helpers shared by the test packages: plain modules, imported explicitly by name.

Nothing here is a test or a fixture. A test module imports what it needs from ``tests.support.<module>``,
never from a conftest or from another test module, so a helper has one home and every use of it is an
import a reader can follow.
"""
