"""Pure decisions: parsing the deploy repository, rendering variants, the per-app state machine.

Nothing in here touches the network, the clock, a logger or the file system; the edges pass data
in and carry decisions out (enforced by the import-linter contract in pyproject.toml).
"""
