"""The local Kubernetes control plane used by the tests and the demo.

Not part of the product: it stands in for a real cluster on a machine without containers.
`python -m localcluster up|down|status` (or hack/cluster/up and hack/cluster/down).
"""
