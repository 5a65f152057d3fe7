"""gitops-canary: git commits drive stable, baseline and canary workloads in Kubernetes.

The package grows by stages (SPEC §7): rendering, git source, Kubernetes edge, analysis and
commit-status sinks, each in its own module, with the pure decisions kept apart from the I/O.
"""

__version__ = "0.1.0"
