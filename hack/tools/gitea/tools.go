//go:build tools

// Package tools pins the Gitea server built by hack/cluster/build.sh.
package tools

import _ "code.gitea.io/gitea"
