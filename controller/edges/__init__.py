"""The I/O edges: git, Kubernetes and commit-status sinks. Each translates its own failures into
the project's error types (controller.errors)."""
