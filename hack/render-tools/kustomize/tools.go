//go:build tools

// Package tools pins kustomize, the renderer of Kustomize app folders, built by
// hack/render-tools/build.sh.
package tools

import _ "sigs.k8s.io/kustomize/kustomize/v5"
