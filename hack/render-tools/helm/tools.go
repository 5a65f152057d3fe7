//go:build tools

// Package tools pins the helm CLI, the renderer of Helm chart app folders, built by
// hack/render-tools/build.sh.
package tools

import _ "helm.sh/helm/v3/cmd/helm"
